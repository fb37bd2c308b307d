"""Recipient tokens: what a client app (a browser, a phone) shows to read one recipient's inbox.

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

import time
from dataclasses import dataclass

from django.core import signing

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
