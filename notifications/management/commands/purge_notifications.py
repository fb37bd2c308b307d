from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.services import retention


class Command(BaseCommand):
    help = (
        "Delete notifications older than the retention period, with their deliveries and dead "
        "letters, in batches (what the beat task does). Inbox messages are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep this many days (default NOTIFY_RETENTION_DAYS); 0 keeps everything.",
        )
        parser.add_argument("--batch", type=int, default=None, help="Notifications per batch.")
        parser.add_argument(
            "--time-budget",
            type=float,
            default=None,
            help="Stop starting batches after this many seconds "
            "(default NOTIFY_RETENTION_TIME_BUDGET_SECONDS; 0 runs one batch).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.NOTIFY_RETENTION_DAYS
        if days < 0:
            raise CommandError("--days must be 0 (keep everything) or more.")
        if days == 0:
            self.stdout.write("Retention is off (0 days): nothing deleted.")
            return
        older_than = timedelta(days=days)
        if options["dry_run"]:
            expired, pending = retention.count_expired_notifications(older_than=older_than)
            self.stdout.write(
                f"{expired} notifications older than {days} days would be deleted "
                f"({pending} more are kept while a delivery is pending)"
            )
            return
        result = retention.purge_expired_notifications(
            older_than=older_than, batch=options["batch"], time_budget=options["time_budget"]
        )
        self.stdout.write(
            f"{result.notifications} notifications, {result.deliveries} deliveries and "
            f"{result.failed_deliveries} dead letters deleted in {result.batches} batches "
            f"({result.seconds:.1f} s, longest batch {result.longest_batch_seconds * 1000:.0f} ms)"
        )
        if not result.finished:
            self.stdout.write("More expired notifications remain: run it again.")
