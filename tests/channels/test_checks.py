"""A provider that is enabled but misconfigured fails Django's system checks at start-up."""

from __future__ import annotations

from typing import ClassVar

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from channels.checks import check_guard_settings, check_providers
from devtools.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN


class NeedsCredentials:
    name: ClassVar[str] = "needs-credentials"
    channel: ClassVar[str] = "sms"

    @classmethod
    def check_configuration(cls) -> list[str]:
        return ["TWILIO_ACCOUNT_SID is not set."]


def _ids(errors) -> list[str]:
    return [error.id for error in errors]


def test_default_providers_pass(settings):
    assert check_providers() == []


def test_unimportable_provider_is_an_error(settings):
    settings.NOTIFY_PROVIDERS = {**settings.NOTIFY_PROVIDERS, "sms": "channels.nope.Provider"}
    errors = check_providers()
    assert _ids(errors) == ["channels.E002"]
    assert "NOTIFY_PROVIDER_SMS" in errors[0].msg


def test_provider_for_the_wrong_channel_is_an_error(settings):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "sms": "channels.providers.email.EmailProvider",
    }
    assert _ids(check_providers()) == ["channels.E003"]


def test_missing_credentials_name_the_setting_and_stop_manage_py(settings):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "sms": f"{__name__}.NeedsCredentials",
    }
    errors = check_providers()
    assert _ids(errors) == ["channels.E004"]
    assert "TWILIO_ACCOUNT_SID" in errors[0].msg

    try:
        call_command("check")
    except SystemCheckError as exc:
        assert "TWILIO_ACCOUNT_SID" in str(exc)
    else:
        raise AssertionError("manage.py check passed with a misconfigured provider")


def test_unknown_channel_is_an_error(settings):
    settings.NOTIFY_PROVIDERS = {**settings.NOTIFY_PROVIDERS, "fax": "x.Y"}
    assert _ids(check_providers()) == ["channels.E001"]


# --- settings read only at the first send: refused at start-up -----------------------------


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("NOTIFY_RATE_LIMITS", {"twilio": "30/sec0nd"}, "NOTIFY_RATE_LIMITS['twilio']='30/sec0nd'"),
        ("NOTIFY_RATE_LIMITS", {"postmark": "lots"}, "is not a rate limit"),
        ("NOTIFY_RATE_LIMIT_BULK_SHARE", 0.0, "NOTIFY_RATE_LIMIT_BULK_SHARE=0.0"),
        ("NOTIFY_RATE_LIMIT_BULK_SHARE", 1.5, "must be in (0, 1]"),
        ("NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS", -1.0, "must be at least 0"),
        ("NOTIFY_CIRCUIT_FAILURES", 0, "NOTIFY_CIRCUIT_FAILURES=0 must be at least 1"),
        ("NOTIFY_CIRCUIT_COOLDOWN_SECONDS", 0.0, "must be more than 0"),
        ("NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS", -5.0, "NOTIFY_CIRCUIT_CONFIG_COOLDOWN"),
        ("NOTIFY_PROVIDER_TIMEOUT_SECONDS", 0.0, "NOTIFY_PROVIDER_TIMEOUT_SECONDS=0.0"),
        ("NOTIFY_PROVIDER_HTTP_POOL_SIZE", 0, "NOTIFY_PROVIDER_HTTP_POOL_SIZE=0"),
        ("NOTIFY_EMAIL_BATCH_SIZE", 0, "NOTIFY_EMAIL_BATCH_SIZE=0"),
        ("NOTIFY_PUSH_SUSPECT_REJECTIONS", 0, "NOTIFY_PUSH_SUSPECT_REJECTIONS=0 must be"),
        ("NOTIFY_PUSH_SUSPECT_REJECTIONS", 10_001, "from 1 to 10000"),
        ("NOTIFY_PUSH_SUSPECT_REJECTIONS", 2.5, "NOTIFY_PUSH_SUSPECT_REJECTIONS=2.5"),
        ("NOTIFY_DELIVERY_IN_FLIGHT", {"push": 0}, "NOTIFY_DELIVERY_IN_FLIGHT['push']=0"),
        (
            "NOTIFY_GUARD_REDIS_URL",
            "amqp://guest:guest@127.0.0.1:5672/vhost",
            "NOTIFY_GUARD_REDIS_URL='amqp://guest:guest@127.0.0.1:5672/vhost' is not a redis://",
        ),
    ],
)
def test_a_guard_setting_that_would_fail_the_first_send_fails_the_check(
    settings, setting, value, expected
):
    assert check_guard_settings() == []
    setattr(settings, setting, value)

    (error,) = check_guard_settings()

    assert error.id == "channels.E005"
    assert expected in error.msg
    try:
        call_command("check")
    except SystemCheckError as exc:
        assert expected in str(exc)
    else:
        raise AssertionError(f"manage.py check passed with {setting}={value!r}")


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("TWILIO_API_BASE", "127.0.0.1:8025", "TWILIO_API_BASE='127.0.0.1:8025' is not"),
        ("TWILIO_STATUS_CALLBACK_URL", "https://", "TWILIO_STATUS_CALLBACK_URL='https://' has no"),
        ("TWILIO_INBOUND_URL", "ftp://x.example/in", "TWILIO_INBOUND_URL='ftp://x.example/in'"),
    ],
)
def test_twilio_urls_need_an_http_scheme_and_a_host(settings, setting, value, expected):
    settings.NOTIFY_PROVIDERS = {
        **settings.NOTIFY_PROVIDERS,
        "sms": "channels.providers.sms.SMSProvider",
    }
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, AUTH_TOKEN
    settings.TWILIO_FROM_NUMBER = "+15005550006"
    assert check_providers() == []
    setattr(settings, setting, value)

    (error,) = check_providers()

    assert expected in error.msg
