# The two log tables change fastest: a broadcast inserts millions of rows, and each delivery
# row is updated twice (claim, outcome) without HOT (status is indexed). PostgreSQL's defaults
# vacuum and analyze a table once a fifth of it has changed, slowly (cost limit 200): a
# 3M-row delivery table then carries millions of dead rows and statistics from before the
# broadcast. These vacuum after 2 % and analyze after 1 %, at ten times the I/O budget.

from django.db import migrations

_DELIVERY = (
    "autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01, "
    "autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 2000"
)
_NOTIFICATION = (
    "autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.02, "
    "autovacuum_vacuum_cost_limit = 2000"
)


def _reset(options: str) -> str:
    return ", ".join(part.split("=")[0].strip() for part in options.split(","))


class Migration(migrations.Migration):
    dependencies = [("notifications", "0008_inbox_states")]

    operations = [
        migrations.RunSQL(
            f"ALTER TABLE notifications_delivery SET ({_DELIVERY})",
            f"ALTER TABLE notifications_delivery RESET ({_reset(_DELIVERY)})",
        ),
        migrations.RunSQL(
            f"ALTER TABLE notifications_notification SET ({_NOTIFICATION})",
            f"ALTER TABLE notifications_notification RESET ({_reset(_NOTIFICATION)})",
        ),
    ]
