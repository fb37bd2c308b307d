"""Each channel's Celery tasks and queues, declared once: everything else reads this table.

A channel has two lanes: the transactional one (one delivery per task, its own queue, so an
OTP never waits behind a broadcast) and the bulk one (a batch of delivery ids per task, the
``.bulk`` queue). config/settings.py builds CELERY_TASK_ROUTES and NOTIFY_QUEUES from it,
notifications/tasks.py names its tasks from it, the services publish with it and the dev
tools start their workers' ``-Q`` lists from it; docker-compose.yml's lists are checked
against it (tests/test_compose.py).

The names are the strings messages already in a broker carry: changing one strands them.
Plain Python, no Django: settings import it before any app is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelLanes:
    channel: str
    task: str  # transactional: one delivery id per message
    batch_task: str  # bulk: a list of delivery ids per message
    queue: str  # the transactional lane
    bulk_queue: str  # the bulk lane

    @property
    def worker_queues(self) -> str:
        """A channel worker's ``-Q``: transactional first, which Redis's queue_order_strategy
        "priority" polls first (config/settings.py)."""
        return f"{self.queue},{self.bulk_queue}"


# fmt: off
# Columns: channel, transactional task, bulk (batch) task, transactional queue, bulk queue.
PUSH = ChannelLanes( "push",  "notifications.tasks.deliver_push",  "notifications.tasks.deliver_push_batch",  "push",  "push.bulk")  # noqa: E501
EMAIL = ChannelLanes("email", "notifications.tasks.deliver_email", "notifications.tasks.deliver_email_batch", "email", "email.bulk")  # noqa: E501
SMS = ChannelLanes(  "sms",   "notifications.tasks.deliver_sms",   "notifications.tasks.deliver_sms_batch",   "sms",   "sms.bulk")  # noqa: E501
INAPP = ChannelLanes("inapp", "notifications.tasks.deliver_inapp", "notifications.tasks.deliver_inapp_batch", "inapp", "inapp.bulk")  # noqa: E501
# fmt: on

LANES: dict[str, ChannelLanes] = {lanes.channel: lanes for lanes in (PUSH, EMAIL, SMS, INAPP)}

# Everything that is no channel's delivery: beat's periodic tasks and the broadcasts'
# bookkeeping, served by one maintenance worker (also Celery's default queue).
MAINTENANCE_QUEUE = "maintenance"
SWEEP_TASK = "notifications.tasks.sweep_stuck_deliveries"
WATCH_BROKER_TASK = "notifications.tasks.watch_broker"
FANOUT_TASK = "notifications.tasks.broadcast_fanout"
RESUME_FANOUTS_TASK = "notifications.tasks.resume_broadcast_fanouts"
SKIP_CANCELLED_TASK = "notifications.tasks.skip_cancelled_deliveries"
PURGE_TASK = "notifications.tasks.purge_expired_notifications"
MAINTENANCE_TASKS = (
    SWEEP_TASK,
    WATCH_BROKER_TASK,
    FANOUT_TASK,
    RESUME_FANOUTS_TASK,
    SKIP_CANCELLED_TASK,
    PURGE_TASK,
)


def task_routes() -> dict[str, dict[str, str]]:
    """CELERY_TASK_ROUTES: each task to its lane."""
    routes: dict[str, dict[str, str]] = {}
    for lanes in LANES.values():
        routes[lanes.task] = {"queue": lanes.queue}
        routes[lanes.batch_task] = {"queue": lanes.bulk_queue}
    routes.update({name: {"queue": MAINTENANCE_QUEUE} for name in MAINTENANCE_TASKS})
    return routes


def all_queues() -> list[str]:
    """NOTIFY_QUEUES: every queue a task is routed to, sorted."""
    return sorted({route["queue"] for route in task_routes().values()})


def worker_queues() -> dict[str, str]:
    """The ``-Q`` list of each worker a deployment runs, by the worker's name: one per channel
    (both its lanes) and the maintenance one."""
    return {
        **{lanes.channel: lanes.worker_queues for lanes in LANES.values()},
        MAINTENANCE_QUEUE: MAINTENANCE_QUEUE,
    }


def serves_bulk(queues: set[str]) -> bool:
    """Whether a worker consuming ``queues`` serves a bulk lane (work that may wait)."""
    return any(lanes.bulk_queue in queues for lanes in LANES.values())
