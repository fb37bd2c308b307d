"""Logs never hold full email addresses, phone numbers, push tokens or API keys."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from channels.lanes import EMAIL
from config.logmasking import MaskPersonalData, mask
from tests.factories import RecipientFactory
from tests.workers import running_worker, settled_delivery, wait_for

APNS_TOKEN = "3f9a1c0b5e7d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a"
FCM_TOKEN = "cX9bD3eF4gH:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx8pK3vDdX_qvF1bT0"
API_KEY = "abcd1234.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to jane.doe@example.com", "to j***@example.com"),
        ("invalid 'To' number +14155550123.", "invalid 'To' number +1415***0123."),
        ("+447700900123 opted out", "+4477***0123 opted out"),
        (f"Authorization: Api-Key {API_KEY}", "Authorization: Api-Key abcd1234.***"),
        (f"key={API_KEY}", "key=abcd1234.***"),
        (f"token {APNS_TOKEN} unregistered", "token 3f9a1c*** unregistered"),
        (f"token {FCM_TOKEN}: UNREGISTERED", "token cX9bD3***: UNREGISTERED"),
    ],
)
def test_personal_data_and_secrets_are_masked(text, masked):
    assert mask(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        # Ids support needs stay readable: deliveries and tasks are UUIDs.
        "delivery 3fa85f64-5717-4562-b3fc-2c963f66afa6 failed in a batch",
        f"{EMAIL.task}[3fa85f64-5717-4562-b3fc-2c963f66afa6] succeeded",
        "sweep re-enqueued 12 stuck deliveries",
        "Twilio API 400 code 21211",
        "retention purge: {'deleted': 1000, 'seconds': 0.2}",
    ],
)
def test_ordinary_log_text_is_left_alone(text):
    assert mask(text) == text


@pytest.fixture
def configured_output() -> Iterator[io.StringIO]:
    """What the handler that settings.LOGGING puts on the root logger writes."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(f, MaskPersonalData) for f in handler.filters)
    ]
    assert len(handlers) == 1, "LOGGING installs the mask on the root logger's handler"
    handler = handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


def test_the_configured_handler_masks_arguments_and_tracebacks(configured_output):
    logger = logging.getLogger("notifications.services.deliveries")
    try:
        raise ValueError("Twilio API 400 code 21211: invalid 'To' number +14155550123")
    except ValueError:
        logger.exception("delivery to %s failed", "jane.doe@example.com")

    written = configured_output.getvalue()
    assert "delivery to j***@example.com failed" in written
    assert "invalid 'To' number +1415***0123" in written
    assert "jane.doe@example.com" not in written
    assert "+14155550123" not in written


def test_djangos_own_loggers_are_masked_too(configured_output):
    logging.getLogger("django.request").warning("Not Found: /api/recipients/jane@example.com")

    assert "Not Found: /api/recipients/j***@example.com" in configured_output.getvalue()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_celery_workers_log_is_masked(api_client, order_shipped, tmp_path):
    """A worker replaces Django's logging with its own handlers and redirects stdout into them;
    the console email backend prints each message there, addresses included."""
    recipient = RecipientFactory(email="jane.doe@example.com")

    with running_worker(EMAIL.queue, tmp_path, EMAIL_URL="consolemail://") as worker:
        accepted = api_client.post(
            "/api/notify",
            {
                "userId": recipient.external_id,
                "event": "order_shipped",
                "channels": ["email"],
                "data": {"orderId": "+14155550123"},
            },
            format="json",
        ).json()
        wait_for(lambda: settled_delivery(accepted["id"], "email"), what="email sent")

        log = wait_for(
            lambda: (text := worker.log_path.read_text()) and "j***@example.com" in text and text,
            what="the printed email in the worker's log",
        )
    assert "jane.doe@example.com" not in log
    assert "+14155550123" not in log
    assert "Order +1415***0123 shipped" in log
