"""What a device token may look like, per platform: the one rule registration (API, admin,
seed_demo) and the push senders read.

- APNs: the device token is bytes that apps send as hexadecimal; 32 bytes (64 hex digits)
  today. Apple says not to hard-code the length, so 64 to 200 hex digits, an even number of
  them, are accepted. Stored in lower case: iOS SDKs print the same token in either case, and
  ``ABCD…`` and ``abcd…`` as two rows would be one phone pushed twice.
- FCM: a registration token is opaque, of the characters Firebase uses (letters, digits,
  ``_``, ``-`` and ``:``), at most 4,096 characters (the column; real ones are ~160 today).
  Kept as given: Firebase compares them exactly.

Whitespace is never trimmed: a token with a space, a newline or a control character is not a
token, and is refused rather than repaired.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.core.exceptions import ValidationError

APNS_MIN_HEX_DIGITS = 64
APNS_MAX_HEX_DIGITS = 200
FCM_MAX_LENGTH = 4096
# The widest of the platforms' rules: what the API schema can say without knowing the platform.
MAX_LENGTH = max(APNS_MAX_HEX_DIGITS, FCM_MAX_LENGTH)

_APNS = re.compile(r"[0-9a-fA-F]+")
_FCM = re.compile(r"[A-Za-z0-9_:-]+")


def apns_token(token: str) -> str:
    """The APNs token in its stored form (lower case); ValidationError if it is not one."""
    if not APNS_MIN_HEX_DIGITS <= len(token) <= APNS_MAX_HEX_DIGITS:
        raise ValidationError(
            f"An APNs device token is {APNS_MIN_HEX_DIGITS} to {APNS_MAX_HEX_DIGITS} "
            f"hexadecimal digits; this one has {len(token)} characters.",
            code="invalid_token",
        )
    if not _APNS.fullmatch(token) or len(token) % 2:
        raise ValidationError(
            "An APNs device token is hexadecimal digits (0-9, a-f), an even number of them.",
            code="invalid_token",
        )
    return token.lower()


def fcm_token(token: str) -> str:
    """The FCM registration token as stored (unchanged); ValidationError if it is not one."""
    if not 1 <= len(token) <= FCM_MAX_LENGTH:
        raise ValidationError(
            f"An FCM registration token is 1 to {FCM_MAX_LENGTH} characters; "
            f"this one has {len(token)}.",
            code="invalid_token",
        )
    if not _FCM.fullmatch(token):
        raise ValidationError(
            "An FCM registration token is letters, digits, '_', '-' and ':' only.",
            code="invalid_token",
        )
    return token


_RULES: dict[str, Callable[[str], str]] = {"apns": apns_token, "fcm": fcm_token}


def device_token(platform: str, token: str) -> str:
    """``token`` as stored for ``platform``; ValidationError if it cannot be that platform's."""
    rule = _RULES.get(platform)
    if rule is None:
        raise ValidationError(f"Unknown push platform {platform!r}.", code="invalid_platform")
    return rule(token)


def is_valid_device_token(platform: str, token: str) -> bool:
    """Whether a stored token (perhaps registered before these rules) could be a real one: a
    provider's "bad path" or "invalid argument" about an invalid one is about that device."""
    try:
        device_token(platform, token)
    except ValidationError:
        return False
    return True
