"""The one table of channels, task names and queues (channels/lanes.py) is what Celery runs:
every channel has its row, every task is named and routed by it, and the names are the
strings messages already in a broker carry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from channels import lanes
from channels.base import Channel
from config.celery import app
from notifications.tasks import DeliveryTask

ROOT = Path(__file__).resolve().parent.parent.parent


def _route(task_name: str) -> str:
    """The queue Celery publishes a task to when the caller names none."""
    return app.amqp.router.route({}, task_name)["queue"].name


def test_every_channel_has_a_row_and_every_row_is_a_channel():
    assert set(lanes.LANES) == set(Channel.values)
    assert all(row.channel == channel for channel, row in lanes.LANES.items())


@pytest.mark.parametrize("channel", Channel.values)
def test_a_channels_tasks_are_registered_and_routed_to_its_lanes(channel):
    row = lanes.LANES[channel]

    assert isinstance(app.tasks[row.task], DeliveryTask)
    assert isinstance(app.tasks[row.batch_task], DeliveryTask)
    assert _route(row.task) == row.queue
    assert _route(row.batch_task) == row.bulk_queue
    assert {row.queue, row.bulk_queue} <= set(settings.NOTIFY_QUEUES)


def test_every_task_of_the_service_is_in_the_table():
    """A task missing from the table would fall back to the default queue unnoticed."""
    ours = {name for name in app.tasks if name.startswith("notifications.")}
    channel_tasks = {name for row in lanes.LANES.values() for name in (row.task, row.batch_task)}

    assert ours == channel_tasks | set(lanes.MAINTENANCE_TASKS)
    assert all(_route(name) == lanes.MAINTENANCE_QUEUE for name in lanes.MAINTENANCE_TASKS)
    assert settings.CELERY_TASK_DEFAULT_QUEUE == lanes.MAINTENANCE_QUEUE
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert beat <= set(lanes.MAINTENANCE_TASKS)


def test_the_queues_are_exactly_the_tables():
    expected = {lanes.MAINTENANCE_QUEUE}
    for row in lanes.LANES.values():
        expected |= {row.queue, row.bulk_queue}
    assert settings.NOTIFY_QUEUES == sorted(expected)
    assert settings.CELERY_TASK_ROUTES == lanes.task_routes()


def test_the_names_are_the_ones_messages_in_brokers_already_carry():
    """Spelled here on purpose, once: renaming a task or a queue in the table strands every
    message already queued under the old name, so it has to be a deliberate migration."""
    assert {
        channel: (row.task, row.batch_task, row.queue, row.bulk_queue)
        for channel, row in lanes.LANES.items()
    } == {
        channel: (
            f"notifications.tasks.deliver_{channel}",
            f"notifications.tasks.deliver_{channel}_batch",
            channel,
            f"{channel}.bulk",
        )
        for channel in ("push", "email", "sms", "inapp")
    }
    assert lanes.MAINTENANCE_QUEUE == "maintenance"
    assert lanes.worker_queues()["email"] == "email,email.bulk"  # transactional first


def test_the_table_imports_without_django():
    """config/settings.py reads it before any app is loaded."""
    probe = "import sys, channels.lanes; sys.exit('django' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr or "importing channels.lanes imported Django"
