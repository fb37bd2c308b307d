from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from notifications.catalog import catalog_load


class Command(BaseCommand):
    help = "Load categories, events and default templates from templates/notifications/."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="Replace templates already in the database (admin edits are lost).",
        )

    def handle(self, *args: Any, overwrite: bool = False, **options: Any) -> None:
        result = catalog_load(overwrite=overwrite)
        self.stdout.write(
            f"{result.categories} categories, {result.events} events, "
            f"{result.templates_created} templates created, "
            f"{result.templates_updated} updated"
        )
