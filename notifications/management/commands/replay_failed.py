from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from channels.base import Channel
from notifications.services import failed_deliveries_matching, failed_deliveries_replay

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise CommandError(f"--since wants a duration like 30m, 1h or 7d, not {text!r}.")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


class Command(BaseCommand):
    help = "Replay dead-lettered deliveries (each at most once) by channel and age."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--channel", choices=Channel.values)
        parser.add_argument("--since", help="Only failures newer than this, e.g. 1h or 7d.")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        since = timezone.now() - parse_duration(options["since"]) if options["since"] else None
        ids = failed_deliveries_matching(channel=options["channel"], since=since)
        if options["dry_run"]:
            self.stdout.write(f"{len(ids)} dead letters would be replayed")
            return
        replayed = failed_deliveries_replay(failed_ids=ids, replayed_by="manage.py replay_failed")
        self.stdout.write(f"{replayed} deliveries replayed of {len(ids)} dead letters")
