"""Settings the API and the delivery engine read lazily (the first request, send or sweep): a
value that would fail there fails `manage.py check` at start-up instead (notifications/checks.py).
"""

from __future__ import annotations

import logging

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from notifications.api.throttling import fail_open
from notifications.checks import check_engine_settings
from tests.conftest import client_for
from tests.factories import create_api_key


def _messages() -> list[str]:
    return [problem.msg for problem in check_engine_settings()]


def test_the_defaults_pass():
    assert check_engine_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        (
            "NOTIFY_API_RATE_LIMIT_STORAGE_URL",
            "amqp://guest:guest@127.0.0.1:5672/notifications",
            "NOTIFY_API_RATE_LIMIT_STORAGE_URL='amqp://guest:guest@127.0.0.1:5672/notifications' "
            "is not a",
        ),
        ("NOTIFY_API_RATE_LIMIT_STORAGE_URL", "127.0.0.1:6379", "is not a"),
        ("NOTIFY_API_RATE_LIMIT", "1000/sec0nd", "NOTIFY_API_RATE_LIMIT='1000/sec0nd'"),
        ("NOTIFY_INBOX_RATE_LIMIT", "20/sec0nd", "NOTIFY_INBOX_RATE_LIMIT='20/sec0nd'"),
        ("NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS", 10, "NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS must"),
        ("NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS", 100, "NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS must"),
        ("NOTIFY_API_RATE_LIMIT_TIMEOUT_SECONDS", 0.0, "must be more than 0"),
        ("NOTIFY_MAX_BODY_BYTES", 10, "NOTIFY_MAX_BODY_BYTES=10 must be at least 1024"),
        ("NOTIFY_MAX_RETRIES", -1, "NOTIFY_MAX_RETRIES=-1"),
        ("NOTIFY_MAX_DEVICES_PER_RECIPIENT", 0, "NOTIFY_MAX_DEVICES_PER_RECIPIENT=0 must be"),
        ("NOTIFY_RETRY_BACKOFF", 0, "NOTIFY_RETRY_BACKOFF=0"),
        ("NOTIFY_RETRY_BACKOFF_MAX", 0, "NOTIFY_RETRY_BACKOFF_MAX=0"),
        ("NOTIFY_LEASE_SECONDS", 10, "NOTIFY_LEASE_SECONDS=10 must exceed the longest"),
        ("NOTIFY_SWEEP_INTERVAL_SECONDS", 0, "NOTIFY_SWEEP_INTERVAL_SECONDS=0"),
        ("NOTIFY_SWEEP_BATCH", 0, "NOTIFY_SWEEP_BATCH=0"),
        ("NOTIFY_FANOUT_PAGE", 0, "NOTIFY_FANOUT_PAGE=0"),
        ("NOTIFY_BULK_WORKER_NICE", -1, "NOTIFY_BULK_WORKER_NICE=-1 must be at least 0"),
        ("NOTIFY_BULK_WORKER_NICE", 20, "NOTIFY_BULK_WORKER_NICE=20 must be at most 19"),
        ("NOTIFY_DELIVERY_BATCH", 0, "NOTIFY_DELIVERY_BATCH=0"),
        ("NOTIFY_BROADCAST_CANCEL_CHUNK", 0, "NOTIFY_BROADCAST_CANCEL_CHUNK=0"),
        ("NOTIFY_RETENTION_DAYS", -1, "NOTIFY_RETENTION_DAYS=-1"),
        ("NOTIFY_RETENTION_BATCH", 0, "NOTIFY_RETENTION_BATCH=0"),
    ],
)
def test_a_setting_that_would_fail_later_fails_the_check(settings, setting, value, expected):
    setattr(settings, setting, value)

    messages = _messages()

    assert any(expected in message for message in messages), messages
    try:
        call_command("check")
    except SystemCheckError as exc:
        assert expected in str(exc)
    else:
        raise AssertionError(f"manage.py check passed with {setting}={value!r}")


def test_a_retention_budget_as_long_as_its_interval_is_a_warning(settings):
    settings.NOTIFY_RETENTION_TIME_BUDGET_SECONDS = settings.NOTIFY_RETENTION_INTERVAL_SECONDS

    (warning,) = check_engine_settings()

    assert warning.id == "notifications.W001"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("NOTIFY_API_RATE_LIMIT_STORAGE_URL", "amqp://guest:guest@127.0.0.1:5672/x"),
        ("NOTIFY_API_RATE_LIMIT", "1000/sec0nd"),
    ],
)
def test_a_process_started_without_the_check_still_answers_requests(
    settings, caplog, setting, value
):
    # Each made every API request a 500 (limits' ConfigurationError, ValueError).
    setattr(settings, setting, value)
    client = client_for(create_api_key()[1])
    fail_open.reset()
    try:
        with caplog.at_level(logging.ERROR, logger="notifications.api.throttling"):
            statuses = [client.get("/api/notifications").status_code for _ in range(2)]
    finally:
        fail_open.reset()

    assert statuses == [200, 200]
    (logged,) = [r for r in caplog.records if "settings are wrong" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert _messages() != []


def test_email_without_a_public_url_is_warned_about_and_a_bad_one_refused(settings):
    settings.NOTIFY_PUBLIC_URL = ""
    assert "notifications.W002" in {found.id for found in check_engine_settings()}

    settings.NOTIFY_PUBLIC_URL = "notify.example.com"
    errors = [found.msg for found in check_engine_settings() if found.id == "notifications.E001"]
    assert any("NOTIFY_PUBLIC_URL" in message for message in errors)

    settings.NOTIFY_PUBLIC_URL = "https://notify.example.com"
    assert not check_engine_settings()


def test_the_demo_page_is_warned_about_unless_the_service_is_on_this_machine_only(settings):
    settings.NOTIFY_DEMO_PAGE = True
    settings.NOTIFY_PUBLIC_URL = "https://notify.example.com"
    assert "notifications.W003" in {found.id for found in check_engine_settings()}

    settings.NOTIFY_PUBLIC_URL = "http://127.0.0.1:8000"  # make run
    assert "notifications.W003" not in {found.id for found in check_engine_settings()}
