"""Email through Django's email API: any django-anymail ESP, or SMTP, chosen by settings.

The provider name recorded on a delivery is the ESP's (``postmark``, ``amazon_ses``...) or the
Django backend's (``smtp``); anymail's tracking webhooks match receipts on the same name.
"""

from __future__ import annotations

import asyncio
import functools
import smtplib
from collections.abc import Hashable, Sequence
from email.utils import make_msgid
from typing import Any, ClassVar, NoReturn

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.module_loading import import_string

from channels.base import (
    BatchAnswer,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)
from channels.http import retry_after_seconds
from channels.providers import email_batch
from channels.providers.pool import KeptConnections


class EmailProvider:
    name: ClassVar[str] = "email"
    channel: ClassVar[str] = "email"

    def limit_name(self) -> str:
        """Rate limits and circuits are kept per ESP ("postmark", "smtp"), not per channel."""
        return _provider_name(_connection_settings())

    async def send(self, message: OutboundMessage) -> ProviderResult:
        # Django's email backends and anymail's ESP clients are synchronous (requests, smtplib):
        # each call runs on a thread of the I/O loop's pool, with its kept connection.
        return await asyncio.to_thread(self._send, message)

    async def send_many(self, messages: Sequence[OutboundMessage]) -> list[BatchAnswer]:
        return await asyncio.to_thread(self._send_many, messages)

    def _send(self, message: OutboundMessage) -> ProviderResult:
        from anymail.exceptions import (
            AnymailAPIError,
            AnymailInvalidAddress,
            AnymailRecipientsRefused,
        )

        address = message.destination.email or ""
        content = message.content
        msgid = make_msgid(domain=_message_id_domain())
        email = EmailMultiAlternatives(
            subject=content.get("subject", ""),
            body=content.get("body", ""),
            from_email=sender(),
            to=[address],
            headers={"Message-ID": msgid, **email_batch.unsubscribe_headers(message)},
        )
        if content.get("html"):
            email.attach_alternative(content["html"], "text/html")
        # anymail ESPs echo metadata in their webhooks; our delivery id there lets a receipt
        # find its delivery even before the ESP's message id was recorded. SMTP ignores it.
        email.metadata = {"deliveryId": str(message.delivery_id)}  # type: ignore[attr-defined]
        key = _connection_settings()
        provider = _provider_name(key)
        try:
            _send_on_kept_connection(email, key)
        except AnymailRecipientsRefused as exc:
            # "invalid": Postmark ErrorCode 300 (bad address); "rejected": 406, the ESP has
            # marked the address inactive after a hard bounce, complaint or manual suppression.
            statuses = email.anymail_status.status or set()  # type: ignore[attr-defined]
            status, code, text, body = _esp_reply(exc)
            raise PermanentDeliveryError(
                text,
                provider=provider,
                status_code=status,
                provider_code=code,
                response=body,
                dead_address=address,
                suppress_reason="invalid" if statuses == {"invalid"} else "hard_bounce",
            ) from exc
        except AnymailAPIError as exc:
            _raise_for_esp_error(exc, provider)
        except AnymailInvalidAddress as exc:
            # The sender was checked above, so it is the recipient's address anymail cannot
            # parse: no ESP would take it.
            raise PermanentDeliveryError(
                str(exc), provider=provider, dead_address=address, suppress_reason="invalid"
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            smtp_code, smtp_text = next(iter(exc.recipients.values()))
            _raise_for_smtp_code(smtp_code, smtp_text, provider, address, exc)
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code >= 500:
                # The server refuses our MAIL FROM: every message would be refused the same
                # way until DEFAULT_FROM_EMAIL (or the relay's policy) is fixed.
                detail = exc.smtp_error.decode(errors="replace")
                raise ProviderConfigurationError(
                    f"{provider} {exc.smtp_code}: sender {exc.sender!r} refused: {detail} "
                    "(check DEFAULT_FROM_EMAIL)"
                ) from exc
            _raise_for_smtp_code(exc.smtp_code, exc.smtp_error, provider, None, exc)
        except smtplib.SMTPDataError as exc:
            _raise_for_smtp_code(exc.smtp_code, exc.smtp_error, provider, None, exc)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError) as exc:
            # Wrong EMAIL_URL credentials or a server without the auth we need: retrying
            # cannot help, an operator must fix the settings.
            raise ProviderConfigurationError(f"{provider}: {exc}") from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            # Disconnects, refused connections and timeouts: the server may be back soon.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=provider) from exc
        esp_id = _esp_message_id(getattr(email, "anymail_status", None))
        return ProviderResult(provider=provider, message_id=esp_id or msgid.strip("<>"))

    def batch_groups(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """Same content to distinct addresses shares one ESP call (email_batch.py)."""
        return email_batch.batch_groups(messages, provider=self.limit_name())

    def _send_many(self, messages: Sequence[OutboundMessage]) -> list[BatchAnswer]:
        key = _connection_settings()
        return email_batch.send_many(
            messages,
            sender=sender(),
            provider=_provider_name(key),
            send=lambda email: _send_on_kept_connection(email, key),
            raise_for_esp_error=_raise_for_esp_error,
        )

    @classmethod
    def check_configuration(cls) -> list[str]:
        problem = sender_problem(str(settings.DEFAULT_FROM_EMAIL))
        problems = [problem] if problem else []
        try:
            # Builds the backend without sending: anymail reads (and demands) its settings here.
            backend = get_connection(fail_silently=False)
        except (ImproperlyConfigured, ImportError) as exc:
            return [*problems, f"EMAIL_BACKEND={settings.EMAIL_BACKEND!r} cannot be used: {exc}"]
        esp_name = getattr(backend, "esp_name", None)
        if not esp_name:
            return problems
        from anymail.utils import get_anymail_setting

        setting_prefix = "ANYMAIL_" + esp_name.upper().replace(" ", "_")
        for credential in ("server_token", "api_key"):
            if hasattr(backend, credential) and not getattr(backend, credential):
                problems.append(f"{setting_prefix}_{credential.upper()} is empty.")
        problems.extend(email_batch.check_batch_size(esp_provider_name(esp_name)))
        if not get_anymail_setting("webhook_secret", default=None):
            # Without it anymail accepts any POST: anyone could suppress any address.
            problems.append(
                "ANYMAIL_WEBHOOK_SECRET is not set: the tracking webhook at /webhooks/anymail/"
                f"{esp_provider_name(esp_name)}/tracking/ would accept unauthenticated posts."
            )
        else:
            from channels.webhooks.anymail import tracking_webhook_problems  # imports this module

            problems.extend(tracking_webhook_problems(esp_name))
        return problems


def sender() -> str:
    """DEFAULT_FROM_EMAIL, or a configuration error when it is not one address anymail (and
    so the ESP) can use: every message would be refused for it (AnymailInvalidAddress)."""
    value = str(settings.DEFAULT_FROM_EMAIL)
    problem = sender_problem(value)
    if problem:
        raise ProviderConfigurationError(f"email: {problem}")
    return value


@functools.lru_cache(maxsize=8)
def sender_problem(value: str) -> str:
    """Why ``value`` cannot be the From of our messages ("" when it can): it must parse, as
    anymail parses it before any ESP call, to exactly one address with a domain; a display
    name is fine ("Shop <notify@shop.example>"). Quotes kept from a shell-quoted env file
    ("'Shop <notify@shop.example>'") are the classic way to get this wrong."""
    from anymail.exceptions import AnymailInvalidAddress
    from anymail.utils import parse_single_address

    if not value.strip():
        return "DEFAULT_FROM_EMAIL is empty."
    hint = ""
    if value[:1] in "'\"" and value[:1] == value[-1:]:
        hint = " (remove the quotes around it: the env file's quotes were kept)"
    try:
        parsed = parse_single_address(value, field="DEFAULT_FROM_EMAIL")
    except AnymailInvalidAddress as exc:
        reason = str(exc).splitlines()[0]  # anymail appends the parser's chain of causes
        return f"DEFAULT_FROM_EMAIL={value!r} is not one valid address: {reason}{hint}"
    if "@" not in parsed.addr_spec or parsed.addr_spec.endswith("@"):
        return f"DEFAULT_FROM_EMAIL={value!r} has no domain{hint}."
    return ""


def _connect(key: Hashable) -> Any:
    # anymail's REQUESTS_TIMEOUT defaults to 30 s; the kwarg bounds every API call (and
    # SMTP's socket) by our own budget instead.
    connection = get_connection(
        fail_silently=False, timeout=settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS
    )
    connection.open()  # an ESP's HTTP session or the SMTP session, kept for the next sends
    return connection


_connections: KeptConnections[Any] = KeptConnections(
    _connect, lambda connection: connection.close()
)


def kept_connections() -> int:
    """Email connections open and idle in this process, waiting for the next message."""
    return _connections.idle()


def close_kept_connections() -> None:
    _connections.close_all()


def _connection_settings() -> Hashable:
    """What a kept connection was opened with: tests and deployments that change any of it
    get a new one."""
    return (
        settings.EMAIL_BACKEND,
        settings.EMAIL_HOST,
        settings.EMAIL_PORT,
        settings.EMAIL_HOST_USER,
        settings.EMAIL_USE_TLS,
        settings.EMAIL_USE_SSL,
        repr(getattr(settings, "ANYMAIL", None)),
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS,
    )


@functools.lru_cache(maxsize=8)
def _provider_name(key: Hashable) -> str:
    return backend_provider_name(get_connection(fail_silently=False))


def _send_on_kept_connection(email: EmailMultiAlternatives, key: Hashable) -> None:
    """Send on a connection kept open across messages (an ESP's keep-alive HTTP session, an
    SMTP session) instead of a new one per message.

    An SMTP server may have dropped an idle session; nothing was sent on it, so the message
    goes once more on a new session.
    """
    try:
        with _connections.borrow(key) as connection:
            email.connection = connection
            email.send()
    except smtplib.SMTPServerDisconnected:
        with _connections.borrow(key) as connection:
            email.connection = connection
            email.send()


def configured_esp_name() -> str | None:
    """The anymail ESP EMAIL_BACKEND names ("Postmark", "Amazon SES"), or None for SMTP, the
    console and a backend that cannot be imported (the system check reports that one).

    Read from the backend class, not an instance: building one demands the ESP's credentials,
    and the URLconf asks this at import, where an exception would make every URL a 500.
    """
    try:
        backend = import_string(settings.EMAIL_BACKEND)
    except (ImportError, ImproperlyConfigured):  # e.g. Amazon SES without boto3
        return None
    esp_name = getattr(backend, "esp_name", None)
    return esp_name if isinstance(esp_name, str) else None


def esp_provider_name(esp_name: str) -> str:
    """anymail's "Postmark" / "Amazon SES" as recorded on deliveries: "postmark", "amazon_ses"."""
    return esp_name.lower().replace(" ", "_")


def backend_provider_name(backend: object) -> str:
    esp_name = getattr(backend, "esp_name", None)
    if esp_name:
        return esp_provider_name(str(esp_name))
    return type(backend).__module__.rsplit(".", 1)[-1]  # "smtp", "console", "locmem"


def _esp_reply(exc: Exception) -> tuple[int | None, str | None, str, Any]:
    """(HTTP status, ESP error code, ESP message, parsed body) of a failed anymail call."""
    response = getattr(exc, "response", None)
    # AnymailRecipientsRefused keeps the reply but not its status.
    status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    if isinstance(response, dict):  # boto3 (Amazon SES): the ClientError's parsed reply
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
        return status, error.get("Code"), str(error.get("Message") or exc), response
    try:
        body = response.json() if response is not None else None
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("Message"):
        code = body.get("ErrorCode")
        return status, None if code is None else str(code), str(body["Message"]), body
    # No parseable reply (connection refused, timeout, HTML error page): anymail's own text.
    return status, None, str(exc).replace("\n", " "), body


def _raise_for_esp_error(exc: Exception, provider: str) -> NoReturn:
    status, code, text, body = _esp_reply(exc)
    if status is None or status == 429 or status >= 500:
        raise TransientDeliveryError(
            text,
            provider=provider,
            status_code=status,
            provider_code=code,
            response=body,
            retry_after=_retry_after(getattr(getattr(exc, "response", None), "headers", {})),
        ) from exc
    if status == 413 or code in email_batch.MESSAGE_REFUSED_CODES:
        raise PermanentDeliveryError(
            text, provider=provider, status_code=status, provider_code=code, response=body
        ) from exc
    detail = f" code {code}" if code else ""
    raise ProviderConfigurationError(f"{provider} {status}{detail}: {text}") from exc


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    return retry_after_seconds(value if isinstance(value, str) else None)


def _raise_for_smtp_code(
    code: int, text: bytes | str, provider: str, address: str | None, exc: Exception
) -> NoReturn:
    detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        raise TransientDeliveryError(
            detail, provider=provider, status_code=code, provider_code=str(code)
        ) from exc
    raise PermanentDeliveryError(
        detail,
        provider=provider,
        status_code=code,
        provider_code=str(code),
        dead_address=address,
        suppress_reason="hard_bounce",
    ) from exc


def _esp_message_id(status: Any) -> str | None:
    """The ESP's id for our one-recipient message. anymail's ``message_id`` is a set when its
    recipients' answers differ (an address it parsed into two, one without an id): stored as
    text, "{None, '88cf...'}" matched no receipt ever, so the delivery stayed ``sent``."""
    value = getattr(status, "message_id", None)
    if isinstance(value, set | frozenset | list | tuple):
        ids = sorted(str(item) for item in value if item)
        return ids[0] if len(ids) == 1 else None
    return str(value) if value else None


def _message_id_domain() -> str:
    sender = str(settings.DEFAULT_FROM_EMAIL).rstrip(">")
    return sender.rsplit("@", 1)[-1] if "@" in sender else "localhost"
