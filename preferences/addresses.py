"""Email addresses as they are stored and matched: one canonical form, so that a suppression
recorded from an ESP's bounce (which names the address as it was sent) matches the recipient."""

from __future__ import annotations

import unicodedata

from django.utils.encoding import punycode


# Format characters (Unicode category Cf: U+200B, U+FEFF, bidi controls...) and the line and
# paragraph separators are invisible: an address holding one is not the address the ESP gets
# (IDNA drops some of them, so a suppression of the visible address would be bypassed).
def has_invisible(value: str) -> bool:
    return any(unicodedata.category(char) in ("Cf", "Zl", "Zp") for char in value)


def canonical_email(value: str) -> str:
    """An address as it is stored and compared: its domain in the ASCII form the mail is sent
    to (IDNA, what Django's SMTP and anymail's ESP backends put on the wire), lower-cased, so
    that ``e6@exämple.com`` and a bounce for ``e6@xn--exmple-cua.com`` are one address.
    ValueError when the domain has no such form."""
    local, _, domain = value.rpartition("@")
    try:
        ascii_domain = punycode(domain)
    except UnicodeError as exc:
        raise ValueError(f"The domain has no IDNA form: {exc}") from None
    return f"{local}@{ascii_domain.lower()}"
