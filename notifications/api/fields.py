"""The API's input fields: each refuses what it cannot take as sent, never coerces or repairs.

The rules are written once here, as regular expressions where they can be, so that the OpenAPI
schema (drf-spectacular reads a ``RegexValidator`` as ``pattern``, see notifications/api/schema.py)
states exactly what the serializers enforce. docs/api-input.md lists them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from django.core.validators import RegexValidator
from phonenumber_field.serializerfields import PhoneNumberField
from rest_framework import serializers

from preferences.addresses import canonical_email, has_invisible

# C0 and C1 control characters and DEL: never meaningful in our strings, and a NUL cannot even be
# stored (PostgreSQL text). Written with \x escapes that Python and ECMA regexes read alike.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
# Unicode white space (Python's str.isspace() and ECMA's \s, spelt out: the two differ).
_SPACE = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def _bmp_ranges(categories: tuple[str, ...]) -> str:
    """The Basic Multilingual Plane's characters of these Unicode categories as a regex class
    body of \\u escapes (which Python and ECMA read alike; characters beyond the BMP are checked
    in code, an ECMA pattern without the "u" flag cannot name them)."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if unicodedata.category(chr(code)) in categories:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "".join(
        rf"\u{start:04x}" if start == end else rf"\u{start:04x}-\u{end:04x}"
        for start, end in ranges
    )


# Format characters (Cf: U+200B, U+FEFF, the bidi controls...): invisible, so "p1\u200b" would
# be an id that looks like "p1".
_FORMAT = _bmp_ranges(("Cf",))

# Free text (a topic's name, an address before its own check): no control characters. Not
# matching "": a field allowing blanks says so itself (and the schema adds it as a oneOf).
TEXT_PATTERN = rf"\A[^{_CONTROL}]+\Z"
# A userId: no white space, no control characters, no "/" (it is a path segment:
# /api/recipients/{userId}) and no "%" (so that a percent-encoding residue, such as Django's
# re-encoding of invalid UTF-8 in a path, "a%FFb", cannot become an id).
USER_ID_PATTERN = rf"\A[^{_CONTROL}{_SPACE}{_FORMAT}/%]+\Z"
USER_ID_MAX_LENGTH = 255
# Catalog keys (events, categories, topics) are slugs (preferences.models).
SLUG_PATTERN = r"\A[-a-zA-Z0-9_]+\Z"
EVENT_MAX_LENGTH = 64  # preferences.models.Event.key
TOPIC_MAX_LENGTH = 128  # preferences.models.Topic.key
IDEMPOTENCY_KEY_MAX_LENGTH = 255

_MESSAGES = {
    TEXT_PATTERN: "Control characters are not allowed.",
    USER_ID_PATTERN: (
        "A userId may not contain white space, control or format characters, '/' or '%%'."
    ),
    SLUG_PATTERN: "Only letters, digits, '-' and '_'.",
}


def ecma_pattern(pattern: str) -> str:
    """A pattern above as OpenAPI states it (what drf-spectacular does for a field's)."""
    return pattern.replace(r"\A", "^").replace(r"\Z", "$").replace(r"\x", r"\u00")


def pattern_validator(pattern: str, message: str | None = None) -> RegexValidator:
    # The message is %-formatted with the value (Django's validators): a "%" is written "%%".
    return RegexValidator(pattern, message=message or _MESSAGES.get(pattern, "Invalid value."))


class StrictCharField(serializers.CharField):
    """A string and only a string, taken as sent: DRF's CharField would quietly turn 42 into
    "42" and trim white space before checking the length, so that the schema's maxLength and the
    stored value disagreed. Control characters are refused unless a ``pattern`` says otherwise.
    """

    def __init__(
        self, *, pattern: str = TEXT_PATTERN, pattern_message: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        self.validators.append(pattern_validator(pattern, pattern_message))

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class UserIdField(StrictCharField):
    """The one rule for a userId, wherever it comes in (path, body, lists)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", USER_ID_MAX_LENGTH)
        super().__init__(pattern=USER_ID_PATTERN, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if has_invisible(value):  # the pattern holds the BMP's; this also those beyond it
            raise serializers.ValidationError(_MESSAGES[USER_ID_PATTERN].replace("%%", "%"))
        return value


class SlugField(StrictCharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(pattern=SLUG_PATTERN, **kwargs)


class StrictBooleanField(serializers.BooleanField):
    """``true`` or ``false``: DRF's would take "no", "off", 0 and 1 as well."""

    default_error_messages = {"invalid": "Must be a JSON boolean, true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if data is True or data is False:
            return data
        self.fail("invalid")
        raise AssertionError("unreachable")


class StrictChoiceField(serializers.ChoiceField):
    """One of the choices, as a string: DRF's compares ``str(data)``."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class UniqueListField(serializers.ListField):
    """A list whose entries are distinct (a repeated channel or userId is a 400, not merged
    without a word); the schema says ``uniqueItems``."""

    default_error_messages = {"duplicates": "Duplicate entries: {duplicates}."}

    def to_internal_value(self, data: Any) -> list[Any]:
        values: list[Any] = super().to_internal_value(data)
        seen: set[Any] = set()
        duplicates: dict[Any, None] = {}
        for value in values:
            if value in seen:
                duplicates[value] = None
            seen.add(value)
        if duplicates:
            self.fail(
                "duplicates", duplicates=", ".join(repr(value) for value in list(duplicates)[:5])
            )
        return values


class TrueField(StrictBooleanField):
    """``true`` only (``{"all": true}``); the schema says ``enum: [true]``."""

    default_error_messages = {"invalid": "Only true is meaningful here."}

    def to_internal_value(self, data: Any) -> bool:
        if data is not True:
            self.fail("invalid")
        return True


# E.164 with the usual separators ("+1 (415) 555-0100"), and ASCII digits only: phonenumbers
# would read letters as a keypad ("+1415CALLNOW" -> +14152255669) and other scripts' digits.
PHONE_PATTERN = r"\A\+[0-9][-0-9 ().]*\Z"


class PhoneField(PhoneNumberField):
    """A phone number in international form, checked before phonenumbers reads it, then stored
    as E.164. The schema states the pattern and ``format: phone`` (its validity is phonenumbers'
    metadata, which no pattern holds)."""

    default_error_messages = {
        "invalid": "Enter a valid phone number in international form, e.g. +14155550100."
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 32)
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        self.validators.append(pattern_validator(PHONE_PATTERN, self.error_messages["invalid"]))

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or not re.search(PHONE_PATTERN, data):
            self.fail("invalid")
        return super().to_internal_value(data)


class EmailField(serializers.EmailField):
    """An address the mail can really go to, stored with its domain in canonical form
    (``canonical_email``): Django's validator alone takes invisible characters, domain
    literals (``a@[127.0.0.1]``, mail to an IP address we choose by no DNS) and a local part
    that only matches case-insensitively (U+017F long s, the Kelvin sign)."""

    default_error_messages = {
        "invisible": "Invisible (format or separator) characters are not allowed.",
        "literal": "A domain literal (an IP address in brackets) is not allowed.",
        "idna": "The domain is not a valid internationalised domain name.",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if has_invisible(data):
            self.fail("invisible")
        value: str = super().to_internal_value(data)
        return value

    def run_validation(self, data: Any = serializers.empty) -> Any:
        value = super().run_validation(data)
        if not value:
            return value
        local, _, domain = value.rpartition("@")
        if domain.startswith("["):
            self.fail("literal")
        if not local.isascii():
            self.fail("invalid")
        try:
            return canonical_email(value)
        except ValueError:
            self.fail("idna")


def user_id_errors(value: str) -> list[str]:
    """The userId rule for a value that did not come through a serializer (a path segment)."""
    try:
        UserIdField().run_validation(value)
    except serializers.ValidationError as exc:
        return [str(message) for message in exc.detail]  # type: ignore[union-attr]
    return []


class RejectUnknownFieldsMixin:
    """Unknown keys are a 400, so a typo ("channel" for "channels") is not silently ignored."""

    fields: Any

    # Checked on the raw input rather than in validate(): a serializer nested with many=True
    # never gets initial_data, only each item here.
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]


# Far beyond what a template can use, far below where json.loads runs out of stack when the
# row is read back (about 900 levels inside a request).
MAX_JSON_DEPTH = 64


def reject_unstorable_json(value: Any) -> None:
    """PostgreSQL text and jsonb hold neither NUL characters nor lone surrogates, and JSON
    nested too deep cannot be read back. DRF's CharField refuses such strings; free-form JSON
    (a notification's data) has to be walked."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            raise serializers.ValidationError(f"Nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise serializers.ValidationError("Null characters are not allowed.")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise serializers.ValidationError("Surrogate characters are not allowed.") from None
