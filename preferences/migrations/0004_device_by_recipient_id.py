from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: the device table can be large, and a plain CREATE INDEX would block
    # registrations (and the pushes' deactivations) while it runs.
    atomic = False

    dependencies = [
        ("preferences", "0003_topic_event_priority_topicsubscription"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="device",
            index=models.Index(fields=["recipient", "id"], name="device_by_recipient_id"),
        ),
    ]
