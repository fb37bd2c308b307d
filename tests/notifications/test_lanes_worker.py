"""The priority lane through a real worker: a transactional notification overtakes a backlog.

One `celery worker -Q inapp,inapp.bulk` (as `make run` and docker-compose start them) serves
both lanes. A bulk backlog is already queued when the worker starts; a transactional in-app
notification posted through the API while the worker drains it must be sent before most of the
backlog. The ordering is read from the rows (bulk deliveries still unsent when the
transactional one was sent), not from a timing threshold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from channels.lanes import INAPP
from notifications.models import Delivery, DeliveryStatus, Notification
from notifications.services.enqueue import enqueue_deliveries
from preferences.models import Priority
from tests.factories import RecipientFactory
from tests.workers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
LANES = INAPP.worker_queues
BACKLOG = 300


class LaneWorker:
    """`celery -A config worker -Q inapp,inapp.bulk` in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.name = f"lanes-{uuid.uuid4().hex[:8]}@tests"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", LANES,
             "-n", self.name, "--concurrency", "2", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.log_path.read_text()[-5000:]}")
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
def start_lane_worker(
    transactional_db: None, broker: Any, tmp_path: Path
) -> Iterator[Callable[[], LaneWorker]]:
    """Starts the worker when the test says so (after its backlog is queued); stops it before
    the database is flushed."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/"
        f"{connection.settings_dict['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    started: list[LaneWorker] = []

    def start() -> LaneWorker:
        started.append(LaneWorker(env, tmp_path / "worker-lanes.log"))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def _queue_bulk_backlog(api_key: Any, event: Any, recipient: Any, count: int) -> list[int]:
    """``count`` bulk in-app deliveries, committed and published as a broadcast leaves them."""
    now = timezone.now()
    notifications = Notification.objects.bulk_create(
        Notification(
            api_key=api_key,
            recipient=recipient,
            external_user_id=recipient.external_id,
            event=event,
            priority=Priority.BULK,
            request_fingerprint=f"backlog-{i}",
        )
        for i in range(count)
    )
    rows = Delivery.objects.bulk_create(
        Delivery(
            notification=notification,
            channel="inapp",
            status=DeliveryStatus.QUEUED,
            content={"subject": "News", "body": "A broadcast."},
            history=[{"status": "queued", "at": now.isoformat(), "attempt": 0}],
            queued_at=now,
            lease_until=now + timedelta(hours=1),
        )
        for notification in notifications
    )
    assert enqueue_deliveries((row.pk, "inapp", Priority.BULK) for row in rows) == count
    return [row.pk for row in rows]


def _bulk_sent(backlog: list[int]) -> int:
    return Delivery.objects.filter(pk__in=backlog, status=DeliveryStatus.SENT).count()


def test_a_transactional_notification_overtakes_a_bulk_backlog(
    api_client, api_key, order_shipped, broker, start_lane_worker
):
    recipient = RecipientFactory()
    backlog = _queue_bulk_backlog(api_key[0], order_shipped, recipient, BACKLOG)
    assert broker.queued(INAPP.bulk_queue) == BACKLOG

    worker = start_lane_worker()
    # The worker is draining the backlog (no ping: by the time one answers, it may be gone).
    wait_for(lambda: worker.alive() and _bulk_sent(backlog), timeout=60, what="first bulk sent")
    response = api_client.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "channels": ["inapp"],
         "priority": "transactional", "data": {"orderId": "OTP"}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 202, response.content

    urgent = wait_for(
        lambda: (
            worker.alive()
            and Delivery.objects.filter(
                notification_id=response.json()["id"], status=DeliveryStatus.SENT
            ).first()
        ),
        timeout=30,
        what="transactional delivery sent",
    )
    # Bulk deliveries not yet sent when the transactional one was: they were still queued
    # (or prefetched) behind it, although published before it.
    waiting = Delivery.objects.filter(
        Q(sent_at__isnull=True) | Q(sent_at__gt=urgent.sent_at), pk__in=backlog
    ).count()
    assert waiting >= BACKLOG // 2, f"only {waiting} of {BACKLOG} bulk deliveries were behind it"

    # Serving transactional first does not starve the bulk lane: the backlog drains too.
    wait_for(lambda: worker.alive() and _bulk_sent(backlog) == BACKLOG, what="backlog drained")
