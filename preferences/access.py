"""Signed credentials of one recipient: the tokens a client app shows to read the inbox, and
the links in an e-mail that opt the recipient out of a category (below).

Recipient tokens: what a client app (a browser, a phone) shows to read one recipient's inbox.

The calling service mints one with its API key (``POST /api/recipients/{userId}/tokens``) and
hands it to the app; the app never holds an API key. A token is Django's signed value
(``django.core.signing``, HMAC-SHA256 with ``SECRET_KEY``; a key moved to
``SECRET_KEY_FALLBACKS`` still verifies, so the signing key rotates without logging anyone
out, and dropping it from the fallbacks revokes every token it signed) of the recipient's id,
its token generation and the expiry. Signature and expiry are checked without the database;
the generation is compared with the recipient's row, which the request reads anyway (an
erased recipient has none): raising it revokes every token of that recipient at once.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing
from django.urls import reverse

_SALT = "preferences.access.recipient-token"


class InvalidToken(Exception):
    """Malformed, tampered with, signed with an unknown key, or expired."""


@dataclass(frozen=True)
class TokenClaims:
    recipient_id: int
    generation: int
    expires_at: int  # Unix time, seconds


def token_mint(*, recipient_id: int, generation: int, ttl_seconds: int) -> tuple[str, int]:
    """A token for the recipient, valid ``ttl_seconds`` from now, and its expiry (Unix time)."""
    expires_at = int(time.time()) + ttl_seconds
    token = signing.dumps({"r": recipient_id, "g": generation, "e": expires_at}, salt=_SALT)
    return token, expires_at


def token_verify(token: str) -> TokenClaims:
    """The claims of a valid, unexpired token; ``InvalidToken`` otherwise."""
    try:
        payload = signing.loads(token, salt=_SALT)
    except (signing.BadSignature, ValueError, UnicodeError) as exc:
        raise InvalidToken("bad signature") from exc
    try:
        claims = TokenClaims(
            recipient_id=_integer(payload["r"]),
            generation=_integer(payload["g"]),
            expires_at=_integer(payload["e"]),
        )
    except (KeyError, TypeError) as exc:  # signed by us, so only an older format gets here
        raise InvalidToken("unknown format") from exc
    if claims.expires_at <= time.time():
        raise InvalidToken("expired")
    return claims


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


# --- unsubscribe links (RFC 8058 one-click, and the page they open) -------------------------

_UNSUBSCRIBE_SALT = "preferences.access.unsubscribe"


class InvalidLink(Exception):
    """Malformed, tampered with or signed with an unknown key."""


class ExpiredLink(Exception):
    """Genuine, but older than ``NOTIFY_UNSUBSCRIBE_LINK_DAYS``."""


@dataclass(frozen=True)
class UnsubscribeClaims:
    recipient_id: int
    category: str  # the category's key
    channel: str


def unsubscribe_token(*, recipient_id: int, category: str, channel: str) -> str:
    """A signed, timestamped value naming whom to opt out of what (no expiry inside: the age
    is checked when it is used, so a change of the setting applies to every link)."""
    return signing.dumps({"r": recipient_id, "k": category, "c": channel}, salt=_UNSUBSCRIBE_SALT)


def unsubscribe_verify(token: str, *, max_age_days: int) -> UnsubscribeClaims:
    payload = _load_link(token, salt=_UNSUBSCRIBE_SALT, max_age_days=max_age_days)
    try:
        claims = UnsubscribeClaims(
            recipient_id=_integer(payload["r"]),
            category=_string(payload["k"]),
            channel=_string(payload["c"]),
        )
    except (KeyError, TypeError) as exc:
        raise InvalidLink("unknown format") from exc
    return claims


def _load_link(token: str, *, salt: str, max_age_days: int) -> Any:
    """A signed link's payload; ``ExpiredLink`` past its age, ``InvalidLink`` if not ours."""
    try:
        return signing.loads(token, salt=salt, max_age=max_age_days * 86400)
    except signing.SignatureExpired as exc:
        raise ExpiredLink(str(exc)) from exc
    except (signing.BadSignature, ValueError, UnicodeError) as exc:
        raise InvalidLink("bad signature") from exc


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def unsubscribe_url(*, recipient_id: int, category: str, channel: str) -> str:
    """The public URL of the unsubscribe page for this recipient, category and channel; "" when
    NOTIFY_PUBLIC_URL is not set (no link can be made that a mail provider could reach)."""
    base = str(settings.NOTIFY_PUBLIC_URL)
    if not base:
        return ""
    token = unsubscribe_token(recipient_id=recipient_id, category=category, channel=channel)
    return base + _unsubscribe_path() + token


@functools.cache
def _unsubscribe_path() -> str:
    """The page's path before the token, reversed once (a reverse per e-mail costs 10 µs)."""
    return reverse("unsubscribe", kwargs={"token": "-"}).removesuffix("-")


# --- the preference centre's links ------------------------------------------------------------
_CENTRE_SALT = "preferences.access.preference-centre"


def preference_centre_token(*, recipient_id: int, generation: int) -> str:
    """A signed, timestamped value naming the recipient (its token generation inside, so that
    revoking the recipient's tokens ends these links too); the age is checked when used."""
    return signing.dumps({"r": recipient_id, "g": generation}, salt=_CENTRE_SALT)


def preference_centre_verify(token: str, *, max_age_days: int) -> TokenClaims:
    payload = _load_link(token, salt=_CENTRE_SALT, max_age_days=max_age_days)
    try:
        return TokenClaims(
            recipient_id=_integer(payload["r"]), generation=_integer(payload["g"]), expires_at=0
        )
    except (KeyError, TypeError) as exc:
        raise InvalidLink("unknown format") from exc


def preference_centre_url(*, recipient_id: int, generation: int) -> str:
    """The page's path, and with NOTIFY_PUBLIC_URL set its full URL."""
    token = preference_centre_token(recipient_id=recipient_id, generation=generation)
    path = reverse("preference-centre", kwargs={"token": token})
    return str(settings.NOTIFY_PUBLIC_URL) + path
