from __future__ import annotations

import re

# A well-formed BCP 47 language tag (RFC 5646 "langtag"; not checked against the subtag
# registry), with "_" accepted as a separator, as POSIX and Java spell "pt_BR": it is stored
# with "-" (canonical_locale). One pattern for the API's check and its OpenAPI schema.
_SEP = "[-_]"
LOCALE_TAG = (
    r"(?:[A-Za-z]{2,3}(?:[-_][A-Za-z]{3}){0,3}|[A-Za-z]{4,8})"  # language (extlang)
    r"(?:[-_][A-Za-z]{4})?"  # script
    r"(?:[-_](?:[A-Za-z]{2}|[0-9]{3}))?"  # region
    r"(?:[-_](?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"  # variants
    r"(?:[-_][0-9A-WYZa-wyz](?:[-_][A-Za-z0-9]{2,8})+)*"  # extensions
    r"(?:[-_][Xx](?:[-_][A-Za-z0-9]{1,8})+)?"  # private use
)
# Not matching "", which is "no locale" (the default templates): a field allows it as a blank.
LOCALE_PATTERN = rf"\A(?:{LOCALE_TAG})\Z"
LOCALE_MAX_LENGTH = 35  # the column; RFC 5646 asks for at least 35 to be stored
_LOCALE = re.compile(LOCALE_PATTERN)


def is_valid_locale(value: str) -> bool:
    return value == "" or (len(value) <= LOCALE_MAX_LENGTH and bool(_LOCALE.search(value)))


def canonical_locale(value: str) -> str:
    """``pt_br`` → ``pt-BR``, ``zh-hant-tw`` → ``zh-Hant-TW``: one spelling for matching.
    The case conventions of RFC 5646 §2.1.1; everything after a singleton is lower case."""
    if not value:
        return ""
    parts = re.split(_SEP, value)
    out = [parts[0].lower()]
    in_extension = False
    for part in parts[1:]:
        in_extension = in_extension or len(part) == 1
        if not in_extension and len(part) == 4 and part.isalpha():
            out.append(part.title())
        elif not in_extension and len(part) == 2 and part.isalpha():
            out.append(part.upper())
        else:
            out.append(part.lower())
    return "-".join(out)


def locale_chain(value: str) -> list[str]:
    """Most specific first, ending with the default "": pt-BR → [pt-BR, pt, ""]."""
    canonical = canonical_locale(value)
    chain: list[str] = []
    parts = canonical.split("-") if canonical else []
    while parts:
        chain.append("-".join(parts))
        parts.pop()
    chain.append("")
    return chain
