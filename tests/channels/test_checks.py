"""A provider that is enabled but misconfigured fails Django's system checks at start-up."""

from __future__ import annotations

from typing import ClassVar

from django.core.management import call_command
from django.core.management.base import SystemCheckError

from channels.checks import check_providers


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
    settings.NOTIFY_PROVIDERS = {**settings.NOTIFY_PROVIDERS, "sms": "channels.email.EmailProvider"}
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
