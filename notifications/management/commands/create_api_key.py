from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from rest_framework_api_key.models import APIKey


class Command(BaseCommand):
    help = "Create an API key and print it (only the hash is stored: copy it now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses the key, e.g. 'orders-service'.")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        _, key = APIKey.objects.create_key(name=name)
        self.stderr.write(f"API key {name!r} created. It is shown once:")
        # The key alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(key)
