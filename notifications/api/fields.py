from __future__ import annotations

from typing import Any

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A string and only a string: DRF's CharField would quietly turn 42 into "42"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


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
