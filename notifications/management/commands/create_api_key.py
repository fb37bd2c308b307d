from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.services.api_keys import ALL_SCOPES, UnknownScope, api_key_create, parse_scopes


class Command(BaseCommand):
    help = "Create an API key and print it (only the hash is stored: copy it now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses the key, e.g. 'orders-service'.")
        parser.add_argument(
            "--scopes",
            default=",".join(ALL_SCOPES),
            help=f"Comma-separated, from {', '.join(ALL_SCOPES)}. Default: all of them.",
        )
        parser.add_argument(
            "--rate-limit",
            default="",
            help="This key's own limit, e.g. '50/second'. Default: NOTIFY_API_RATE_LIMIT.",
        )

    def handle(self, *args: Any, name: str, scopes: str, rate_limit: str, **options: Any) -> None:
        try:
            chosen = parse_scopes(scopes)
            _, key = api_key_create(name=name, scopes=chosen, rate_limit=rate_limit)
        except (UnknownScope, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        if not chosen:
            self.stderr.write("Warning: a key with no scopes may call nothing.")
        self.stderr.write(f"API key {name!r} created, scopes {', '.join(chosen)}. Shown once:")
        # The key alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(key)
