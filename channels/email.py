"""Email through Django's email API: any django-anymail ESP, or SMTP, chosen by settings."""

from __future__ import annotations

import smtplib
from email.utils import make_msgid
from typing import ClassVar

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection

from channels.base import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)


class EmailProvider:
    name: ClassVar[str] = "email"
    channel: ClassVar[str] = "email"

    def send(self, message: OutboundMessage) -> ProviderResult:
        from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused

        address = message.destination.email or ""
        content = message.content
        msgid = make_msgid(domain=_message_id_domain())
        email = EmailMultiAlternatives(
            subject=content.get("subject", ""),
            body=content.get("body", ""),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[address],
            headers={"Message-ID": msgid},
            connection=get_connection(fail_silently=False),
        )
        if content.get("html"):
            email.attach_alternative(content["html"], "text/html")
        provider = _backend_name()
        try:
            email.send()
        except AnymailRecipientsRefused as exc:
            raise PermanentDeliveryError(
                str(exc), provider=provider, dead_address=address, suppress_reason="hard_bounce"
            ) from exc
        except AnymailAPIError as exc:
            status = exc.status_code
            if status is None or status == 429 or status >= 500:
                raise TransientDeliveryError(
                    str(exc), provider=provider, status_code=status
                ) from exc
            raise ProviderConfigurationError(f"{provider} {status}: {exc}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            _raise_for_smtp_code(code, text, provider, address, exc)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            _raise_for_smtp_code(exc.smtp_code, exc.smtp_error, provider, None, exc)
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            # Disconnects, refused connections and timeouts: the server may be back soon.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=provider) from exc
        status = getattr(email, "anymail_status", None)
        esp_id = getattr(status, "message_id", None) if status is not None else None
        return ProviderResult(
            provider=provider, message_id=str(esp_id) if esp_id else msgid.strip("<>")
        )

    @classmethod
    def check_configuration(cls) -> list[str]:
        if not settings.DEFAULT_FROM_EMAIL:
            return ["DEFAULT_FROM_EMAIL is empty."]
        return []


def _raise_for_smtp_code(
    code: int, text: bytes | str, provider: str, address: str | None, exc: Exception
) -> None:
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


def _backend_name() -> str:
    backend = str(settings.EMAIL_BACKEND)
    if backend.startswith("anymail.backends."):
        return backend.split(".")[2]
    return backend.rsplit(".", 2)[-2]  # "smtp", "console", "locmem"


def _message_id_domain() -> str:
    sender = str(settings.DEFAULT_FROM_EMAIL).rstrip(">")
    return sender.rsplit("@", 1)[-1] if "@" in sender else "localhost"
