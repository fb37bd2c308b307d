"""Which provider sends which channel: read from settings.NOTIFY_PROVIDERS, one instance each."""

from __future__ import annotations

import functools

from django.conf import settings
from django.utils.module_loading import import_string

from channels.base import Channel, Provider


def provider_path(channel: str) -> str:
    return str(settings.NOTIFY_PROVIDERS.get(channel, "") or "")


def is_configured(channel: str) -> bool:
    return bool(provider_path(channel))


@functools.cache
def _provider_instance(path: str) -> Provider:
    # Its calls are gated by the delivery engine, a chunk at a time (channels/gate/guard.py).
    return import_string(path)()  # type: ignore[no-any-return]


def provider_for(channel: str) -> Provider | None:
    """The provider for ``channel``, or None when the channel is not configured.

    Instances are cached per process (one HTTP connection pool per worker), keyed by path so
    tests that override settings get the right one.
    """
    path = provider_path(channel)
    return _provider_instance(path) if path else None


def configured_channels() -> list[str]:
    return [channel.value for channel in Channel if is_configured(channel.value)]
