"""Django logs every SuspiciousOperation (a forged Host header, a body over the limit, too many
form fields...) at ERROR with a traceback. Anyone on the internet can cause them, so each would
fill the error log and page whoever watches it: this filter keeps them as one WARNING line."""

from __future__ import annotations

import logging


class QuietSuspiciousRequests(logging.Filter):
    """On a handler: records of ``django.security.*`` become WARNING without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno > logging.WARNING:
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            record.exc_info = None
            record.exc_text = None
        return True
