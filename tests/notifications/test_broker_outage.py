"""The broker is down when a notification is accepted: 202 anyway, nothing lost, swept later."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from channels.lanes import EMAIL
from notifications import services
from notifications.models import Delivery, DeliveryStatus
from tests.factories import RecipientFactory
from tests.workers import ROOT, dead_broker_url, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

# Runs the real API in a process whose broker URL points at a port nothing listens on.
_ACCEPT_WITH_DEAD_BROKER = """
import json, os, sys, time
import django
django.setup()
from django.test import Client
started = time.monotonic()
response = Client().post(
    "/api/notify",
    json.dumps({"userId": sys.argv[1], "event": "order_shipped", "channels": ["email"]}),
    content_type="application/json",
    HTTP_AUTHORIZATION="Api-Key " + sys.argv[2],
)
print(json.dumps({"status": response.status_code, "body": response.json(),
                  "seconds": time.monotonic() - started}))
"""


def test_accept_survives_a_dead_broker_and_the_sweep_delivers_later(api_key, order_shipped, broker):
    recipient = RecipientFactory()
    completed = subprocess.run(
        [sys.executable, "-c", _ACCEPT_WITH_DEAD_BROKER, recipient.external_id, api_key[1]],
        cwd=ROOT,
        env=worker_env(CELERY_BROKER_URL=dead_broker_url()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.strip().splitlines()[-1])

    # The caller is told the truth: accepted. The row is committed with a lease.
    assert answer["status"] == 202
    assert answer["body"]["deliveries"] == [{"channel": "email", "status": "queued"}]
    assert "could not publish" in completed.stderr
    delivery = Delivery.objects.get(notification_id=answer["body"]["id"])
    assert delivery.status == DeliveryStatus.QUEUED
    assert broker.queued(EMAIL.queue) == 0

    # Once the lease runs out the sweep publishes it to the (now reachable) broker.
    assert services.sweep_stuck_deliveries() == 0  # lease still running: not yet
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert services.sweep_stuck_deliveries() == 1  # publishes on commit
    assert broker.queued(EMAIL.queue) == 1
