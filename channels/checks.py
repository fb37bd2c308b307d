"""A provider that is enabled but misconfigured stops the service at start-up."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from channels.base import Channel


@register()
def check_providers(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    for channel, path in settings.NOTIFY_PROVIDERS.items():
        if channel not in Channel.values:
            errors.append(
                Error(
                    f"NOTIFY_PROVIDERS names unknown channel {channel!r}.",
                    hint=f"Channels are: {', '.join(Channel.values)}.",
                    id="channels.E001",
                )
            )
            continue
        if not path:
            continue
        setting = f"NOTIFY_PROVIDER_{channel.upper()}"
        try:
            provider_class = import_string(path)
        except ImportError as exc:
            errors.append(
                Error(f"{setting}={path!r} cannot be imported: {exc}", id="channels.E002")
            )
            continue
        if getattr(provider_class, "channel", None) != channel:
            errors.append(
                Error(
                    f"{setting}={path!r} is a provider for "
                    f"{getattr(provider_class, 'channel', None)!r}, not {channel!r}.",
                    id="channels.E003",
                )
            )
            continue
        for problem in provider_class.check_configuration():
            errors.append(Error(f"{setting} ({path}): {problem}", id="channels.E004"))
    return errors
