"""The fan-out's single keyset cursor becomes one cursor per segment (parallel chains)."""

import django.contrib.postgres.fields
from django.db import migrations, models

BIGINT_MAX = 9223372036854775807


class Migration(migrations.Migration):
    dependencies = [("notifications", "0009_log_tables_autovacuum")]

    operations = [
        migrations.AddField(
            model_name="broadcast",
            name="fanout_bounds",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), default=list, size=None
            ),
        ),
        migrations.AddField(
            model_name="broadcast",
            name="fanout_cursors",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), default=list, size=None
            ),
        ),
        # A broadcast accepted before: one segment, where its cursor was.
        migrations.RunSQL(
            f"UPDATE notifications_broadcast SET fanout_cursors = ARRAY[fanout_cursor],"
            f" fanout_bounds = ARRAY[{BIGINT_MAX}::bigint]",
            migrations.RunSQL.noop,
        ),
        migrations.RemoveField(model_name="broadcast", name="fanout_cursor"),
    ]
