"""A worker that serves a bulk lane runs at a lower CPU priority.

On a host it shares, a broadcast's drain would otherwise take the cores in equal shares with
what must not wait for it: the transactional workers, the fan-out that feeds the drain, and
PostgreSQL. A worker on both lanes is lowered too: the transactional-only workers of the
recommended layout keep their pace (docs/lanes.md). The scheduler is work-conserving, so the
drain still has every cycle the others leave.

Where each process is in a session of its own and the kernel groups sessions (autogroup),
nice only ranks a process within its session; a session leader lowers its session's group
instead (/proc/self/autogroup). In containers, CPU weights do the same (docker-compose.yml's
cpu_shares).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from django.conf import settings

from channels.lanes import serves_bulk

logger = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_if_serving_bulk(*, sender: Any, **_: Any) -> None:
    """celery's worker_init: the queues this worker consumes are selected by then."""
    queues = set(sender.app.amqp.queues.consume_from)
    nice = int(settings.NOTIFY_BULK_WORKER_NICE)
    if nice <= 0 or not serves_bulk(queues):
        return
    os.nice(nice)
    if os.getsid(0) == os.getpid() and AUTOGROUP.exists():
        try:
            AUTOGROUP.write_text(f"{nice}\n")
        except OSError:  # a kernel without autogroup scheduling, or a read-only /proc
            logger.debug("could not lower this session's autogroup", exc_info=True)
    logger.info("serving a bulk lane (%s): CPU priority lowered by %d", queues, nice)
