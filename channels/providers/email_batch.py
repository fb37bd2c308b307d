"""Email batches: one ESP API call for many deliveries of the same content.

A broadcast renders its email once per (event, locale) unless the template uses recipient
fields, so a batch of 100 deliveries usually holds 100 identical messages to 100 addresses.
anymail sends such a message as a batch when it carries ``merge_metadata``: Postmark's
``/email/batch`` gets one message per address, each with its own metadata (our delivery id,
echoed in the ESP's webhooks) and its own answer. Only ESPs named in NOTIFY_EMAIL_BATCH_ESPS
are trusted with it: with an ESP or backend that does not split such a message (SMTP), every
recipient would see every address.

One call carries at most NOTIFY_EMAIL_BATCH_SIZE messages. That is also how many messages a
worker killed between the ESP's acceptance and our commit sends again (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NoReturn

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from channels.base import (
    BatchAnswer,
    OutboundMessage,
    PermanentDeliveryError,
    ProviderConfigurationError,
    ProviderResult,
    TransientDeliveryError,
)

# anymail's per-recipient statuses: accepted, or refused for good (and why, as suppressions).
_ACCEPTED = {"sent", "queued"}
_REFUSED = {"invalid": "invalid", "rejected": "hard_bounce"}
# Postmark refused this one message (malformed request, forbidden attachment, too large), not
# the account or the address: dead-letter it, change nothing else. Other 4xx mean the server
# token, sender signature or account needs an operator. (A single send's code, and a batch
# reply's per-message code that anymail does not map to a status.)
MESSAGE_REFUSED_CODES = {"300", "411"}
_RECIPIENT_CODES = {406: "rejected"}
# Messages one batch call of the ESP may carry (Postmark refuses more with ErrorCode 410).
_ESP_BATCH_LIMITS = {"postmark": 500}


def check_batch_size(provider: str) -> list[str]:
    """A batch size the ESP would refuse every call of is a configuration error."""
    limit = _ESP_BATCH_LIMITS.get(provider)
    size = int(settings.NOTIFY_EMAIL_BATCH_SIZE)
    if provider in settings.NOTIFY_EMAIL_BATCH_ESPS and limit is not None and size > limit:
        return [f"NOTIFY_EMAIL_BATCH_SIZE={size} is over {provider}'s {limit} per batch call."]
    return []


def unsubscribe_headers(message: OutboundMessage) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers for a message that carries an unsubscribe link: what Gmail
    and Yahoo require of bulk senders, and what shows the mail client's unsubscribe button."""
    if not message.unsubscribe_url:
        return {}
    links = [f"<{message.unsubscribe_url}>"]
    if settings.NOTIFY_UNSUBSCRIBE_MAILTO:
        links.append(f"<mailto:{settings.NOTIFY_UNSUBSCRIBE_MAILTO}?subject=unsubscribe>")
    return {
        "List-Unsubscribe": ", ".join(links),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def batch_groups(messages: Sequence[OutboundMessage], *, provider: str) -> list[list[int]]:
    """Messages with the same content and distinct addresses share a call, up to the size."""
    size = int(settings.NOTIFY_EMAIL_BATCH_SIZE)
    if size <= 1 or provider not in settings.NOTIFY_EMAIL_BATCH_ESPS:
        return [[index] for index in range(len(messages))]
    open_groups: dict[Hashable, list[list[int]]] = {}
    addresses: dict[int, set[str]] = {}  # id() of a group → the addresses it holds
    groups: list[list[int]] = []
    for index, message in enumerate(messages):
        address = (message.destination.email or "").lower()
        candidates = open_groups.setdefault(_content_key(message), [])
        # An address twice in one call would get one message for two deliveries.
        group = next(
            (g for g in candidates if len(g) < size and address not in addresses[id(g)]), None
        )
        if group is None:
            group = []
            candidates.append(group)
            groups.append(group)
            addresses[id(group)] = set()
        group.append(index)
        addresses[id(group)].add(address)
    return groups


def _content_key(message: OutboundMessage) -> Hashable:
    content = message.content
    return (content.get("subject", ""), content.get("body", ""), content.get("html", ""))


def send_many(
    messages: Sequence[OutboundMessage],
    *,
    sender: str,
    provider: str,
    send: Callable[[EmailMultiAlternatives], None],
    raise_for_esp_error: Callable[[Exception, str], NoReturn],
) -> list[BatchAnswer]:
    """One ESP call for a group from ``batch_groups``; an answer per message, in order.

    A failure of the whole call (the ESP down, throttled, unreachable, a bad token) is raised
    as the single send raises it: it is every message's answer.
    """
    from anymail.exceptions import AnymailAPIError, AnymailInvalidAddress, AnymailRecipientsRefused

    first = messages[0]
    email = EmailMultiAlternatives(
        subject=first.content.get("subject", ""),
        body=first.content.get("body", ""),
        from_email=sender,
        to=[message.destination.email or "" for message in messages],
    )
    if first.content.get("html"):
        email.attach_alternative(first.content["html"], "text/html")
    # The ESP generates each message's Message-ID: one header would be shared by them all.
    email.merge_metadata = {  # type: ignore[attr-defined]
        message.destination.email: {"deliveryId": str(message.delivery_id)} for message in messages
    }
    # Each recipient's own unsubscribe link (anymail's merge_headers; the batching ESPs have it).
    merge_headers = {
        message.destination.email: unsubscribe_headers(message)
        for message in messages
        if message.unsubscribe_url
    }
    if merge_headers:
        email.merge_headers = merge_headers  # type: ignore[attr-defined]
    try:
        send(email)
    except AnymailRecipientsRefused:
        pass  # every address was refused: the per-address statuses below say how
    except AnymailInvalidAddress:
        # One address anymail cannot parse stops the whole call before it is made (the
        # sender was checked before): that one is dead, the others go again on their own.
        return [_unparsed(message, provider) for message in messages]
    except AnymailAPIError as exc:
        partial = _answers_from_batch_reply(exc, messages, provider)
        if partial is None:
            raise_for_esp_error(exc, provider)
        return partial
    except (TimeoutError, OSError) as exc:
        raise TransientDeliveryError(f"{type(exc).__name__}: {exc}", provider=provider) from exc
    statuses = {
        address.lower(): status
        for address, status in email.anymail_status.recipients.items()  # type: ignore[attr-defined]
    }
    replies = _batch_replies(getattr(email.anymail_status, "esp_response", None), messages)  # type: ignore[attr-defined]
    answers: list[BatchAnswer] = []
    for message, reply in zip(messages, replies, strict=True):
        address = message.destination.email or ""
        status = statuses.get(address.lower())
        state = getattr(status, "status", None) or "unknown"
        if state in _ACCEPTED and getattr(status, "message_id", None):
            answers.append(ProviderResult(provider=provider, message_id=str(status.message_id)))  # type: ignore[union-attr]
        elif state in _REFUSED:
            answers.append(_refused(address, state, reply, provider))
        else:
            # The ESP did not say what became of this one: trying again risks a duplicate,
            # not trying risks a loss; at-least-once picks the duplicate.
            answers.append(
                TransientDeliveryError(
                    f"no status for this address in the batch reply ({state})", provider=provider
                )
            )
    return answers


def _unparsed(message: OutboundMessage, provider: str) -> BatchAnswer:
    from anymail.exceptions import AnymailInvalidAddress
    from anymail.utils import parse_single_address

    address = message.destination.email or ""
    try:
        parse_single_address(address)
    except AnymailInvalidAddress as exc:
        return PermanentDeliveryError(
            str(exc), provider=provider, dead_address=address, suppress_reason="invalid"
        )
    return TransientDeliveryError(
        "not sent: another address of its batch call was invalid", provider=provider
    )


def _refused(address: str, state: str, reply: dict[str, Any], provider: str) -> BatchAnswer:
    code = reply.get("ErrorCode")
    return PermanentDeliveryError(
        str(reply.get("Message") or f"{address} refused ({state})"),
        provider=provider,
        status_code=422,
        provider_code=None if code is None else str(code),
        response=reply or None,
        dead_address=address,
        suppress_reason=_REFUSED[state],
    )


def _batch_replies(response: Any, messages: Sequence[OutboundMessage]) -> list[dict[str, Any]]:
    """The ESP's reply for each message, when it answered a list in the messages' order
    (Postmark's batch does); empty dicts otherwise. Only used to explain refusals."""
    try:
        body = response.json() if response is not None else None
    except ValueError:
        body = None
    if isinstance(body, list) and len(body) == len(messages):
        return [item if isinstance(item, dict) else {} for item in body]
    return [{} for _ in messages]


def _answers_from_batch_reply(
    exc: Exception, messages: Sequence[OutboundMessage], provider: str
) -> list[BatchAnswer] | None:
    """A batch the ESP answered 200, message by message, that anymail refused as a whole
    because one message has an error code it does not map (Postmark's 411, say): the others
    were accepted and must be recorded as sent, not failed or sent again. None when the call
    failed as a whole."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != 200:
        return None
    replies = _batch_replies(response, messages)
    if not any(replies):
        return None
    answers: list[BatchAnswer] = []
    for message, reply in zip(messages, replies, strict=True):
        code = reply.get("ErrorCode")
        text = str(reply.get("Message") or "")
        address = message.destination.email or ""
        if code == 0 and reply.get("MessageID"):
            answers.append(ProviderResult(provider=provider, message_id=str(reply["MessageID"])))
        elif code in _RECIPIENT_CODES:
            answers.append(_refused(address, _RECIPIENT_CODES[code], reply, provider))
        elif code == 300 and "'to'" in text.lower():
            answers.append(_refused(address, "invalid", reply, provider))
        elif str(code) in MESSAGE_REFUSED_CODES:
            answers.append(
                PermanentDeliveryError(
                    text,
                    provider=provider,
                    status_code=422,
                    provider_code=str(code),
                    response=reply,
                )
            )
        elif code in (100, 429) or code == 0:
            answers.append(
                TransientDeliveryError(
                    text or "no message id in the batch reply",
                    provider=provider,
                    provider_code=str(code),
                    response=reply,
                )
            )
        else:
            answers.append(ProviderConfigurationError(f"{provider} code {code}: {text}"))
    return answers
