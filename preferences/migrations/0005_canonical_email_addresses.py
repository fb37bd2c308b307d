"""Email addresses stored before they were canonical (preferences.addresses): an internationalised
domain in its ASCII (IDNA) form, so the send-time SQL, which compares lower(recipient.email)
with a suppression's address, matches a bounce that names the punycode form."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from preferences.addresses import canonical_email

_NON_ASCII = r"[^\x01-\x7f]"


def _canonical(address: str) -> str | None:
    try:
        return canonical_email(address)
    except ValueError:
        return None  # no IDNA form: left as it is, the API refuses it on its next change


def forwards(apps: Any, schema_editor: Any) -> None:
    Recipient = apps.get_model("preferences", "Recipient")
    Suppression = apps.get_model("preferences", "Suppression")
    for recipient in Recipient.objects.filter(email__regex=_NON_ASCII).iterator():
        canonical = _canonical(recipient.email)
        if canonical and canonical != recipient.email:
            Recipient.objects.filter(pk=recipient.pk).update(email=canonical)
    for suppression in Suppression.objects.filter(
        channel="email", address__regex=_NON_ASCII
    ).iterator():
        canonical = _canonical(suppression.address)
        if not canonical or canonical == suppression.address:
            continue
        canonical = canonical.lower()
        if Suppression.objects.filter(channel="email", address=canonical).exists():
            suppression.delete()  # the same address, already suppressed in canonical form
        else:
            Suppression.objects.filter(pk=suppression.pk).update(address=canonical)


class Migration(migrations.Migration):
    dependencies = [("preferences", "0004_device_by_recipient_id")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
