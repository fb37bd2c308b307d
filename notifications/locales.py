from __future__ import annotations

import re

_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def is_valid_locale(value: str) -> bool:
    return value == "" or bool(_LOCALE.match(value))


def canonical_locale(value: str) -> str:
    """``pt_br`` → ``pt-BR``, ``zh-hant-tw`` → ``zh-Hant-TW``: one spelling for matching."""
    if not value:
        return ""
    parts = re.split(r"[-_]", value)
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            out.append(part.title())
        elif len(part) == 2 and part.isalpha():
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
