"""A logging filter that masks personal data and secrets before any handler writes a record.

Installed on every handler in LOGGING (the API, gunicorn through Django, management commands)
and on the handlers Celery sets up in workers, which replace the root logger's (see
``mask_celery_handlers``). It masks the formatted message, the exception text and the stack:
provider errors quote addresses ("invalid 'To' number +1415..."), and a console email backend
prints whole messages to stdout, which a worker redirects into its log.

- email addresses: ``jane.doe@example.com`` -> ``j***@example.com``
- E.164 phone numbers: ``+14155550123`` -> ``+1415***0123``
- API keys: ``Api-Key abcd1234.secret`` -> ``Api-Key abcd1234.***`` (the prefix is public)
- long token-like strings (push tokens, secrets): 32+ hex or 40+ base64/url-safe characters
  -> their first 6 characters and ``***``
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

_EMAIL = re.compile(r"\b([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})\b")
# E.164 with 9 to 15 digits: the country code and first digits, and the last four, stay.
_PHONE = re.compile(r"(?<![\w+])\+(\d{4})\d{1,7}(\d{4})\b")
# Our keys are "<8-character public prefix>.<32-character secret>".
_API_KEY_HEADER = re.compile(r"(Api-Key\s+)([A-Za-z0-9]{0,8})\S*", re.IGNORECASE)
_API_KEY = re.compile(r"\b([A-Za-z0-9]{8})\.[A-Za-z0-9]{32}\b")
# 32+ characters of letters, digits, "_", "-" or ":" with a digit among them: APNs tokens (64
# hex), FCM tokens ("<id>:APA91b..."), secrets. UUIDs (delivery and task ids, which support
# needs) are matched first and kept.
_UUID_OR_TOKEN = re.compile(
    r"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?<![\w\-:])(?=[\w\-:]*\d)(?P<head>[A-Za-z0-9]{6})[\w\-:]{25,}[\w\-]"
)


def _token(match: re.Match[str]) -> str:
    return match.group("uuid") or f"{match.group('head')}***"


def mask(text: str) -> str:
    text = _API_KEY_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}.***", text)
    text = _API_KEY.sub(r"\1.***", text)
    text = _EMAIL.sub(r"\1***@\2", text)
    text = _PHONE.sub(r"+\1***\2", text)
    return _UUID_OR_TOKEN.sub(_token, text)


class MaskPersonalData(logging.Filter):
    """Rewrites the record in place: every handler after this one sees only the masked text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_masked", False):  # one record can reach several handlers
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        record.msg = mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        record._masked = True
        return True


def mask_celery_handlers(logger: logging.Logger | None = None, **kwargs: Any) -> None:
    """For Celery's ``after_setup_logger`` / ``after_setup_task_logger`` signals: a worker
    hijacks the root logger (``worker_hijack_root_logger``) and installs its own handlers,
    without the LOGGING filters; this puts the mask on them."""
    for handler in logger.handlers if logger is not None else ():
        if not any(isinstance(f, MaskPersonalData) for f in handler.filters):
            handler.addFilter(MaskPersonalData())
