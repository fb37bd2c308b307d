"""Whether the guard's Redis (circuit states, rate-limit windows) is worth asking right now.

When it cannot be reached, the gates fail open (a provider is called without a limit or a
circuit; its own 429s and errors still count). Asking it anyway on every call would add its
connect timeout to every send, and a send that slow outlives its lease: the sweep hands the
delivery to another worker and the recipient gets it twice (the chaos suite's Redis restart).
So after one failure the gates skip Redis for NOTIFY_GUARD_REDIS_RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)

# Seconds for a connect or a command: the guard's Redis is local and answers in well under a
# millisecond; anything slower is an outage, not a slow reply.
SOCKET_TIMEOUT = 0.5

_skip_until = 0.0


def available() -> bool:
    return time.monotonic() >= _skip_until


def mark_unavailable(error: BaseException) -> None:
    global _skip_until
    pause = float(settings.NOTIFY_GUARD_REDIS_RETRY_SECONDS)
    _skip_until = time.monotonic() + pause
    logger.warning(
        "guard Redis unavailable (%s): providers called without limits or circuits for %gs",
        error,
        pause,
    )


def reset() -> None:
    """Ask Redis again from the next call on (tests; a deployment just waits the pause out)."""
    global _skip_until
    _skip_until = 0.0
