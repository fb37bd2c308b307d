"""Loading the shipped catalog (categories, events, templates) from files under templates/."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from notifications.locales import canonical_locale
from notifications.models import Template
from notifications.rendering import validate_template_source
from preferences.models import Category, Event

# <event>/<channel>[.<locale>].<part>, e.g. order_shipped/email.pt-BR.subject.txt
_FILE = re.compile(
    r"^(?P<channel>[a-z]+)(?:\.(?P<locale>[A-Za-z0-9-]+))?\.(?P<part>subject\.txt|body\.txt|body\.html|url\.txt)$"
)
_PART_FIELD = {
    "subject.txt": "subject",
    "body.txt": "body",
    "body.html": "html_body",
    "url.txt": "url",
}


@dataclass(frozen=True)
class CatalogLoadResult:
    categories: int
    events: int
    templates_created: int
    templates_updated: int


def catalog_dir() -> Path:
    return Path(settings.BASE_DIR) / "templates" / "notifications"


@transaction.atomic
def catalog_load(*, directory: Path | None = None, overwrite: bool = False) -> CatalogLoadResult:
    """Upsert categories and events from catalog.json and templates from their files.

    Templates already in the database are left as they are (they may have been edited in
    admin) unless ``overwrite`` is set.
    """
    root = directory or catalog_dir()
    catalog = json.loads((root / "catalog.json").read_text())
    categories = {}
    for item in catalog["categories"]:
        category, _ = Category.objects.update_or_create(
            key=item["key"],
            defaults={"name": item.get("name", ""), "critical": item.get("critical", False)},
        )
        categories[category.key] = category
    events = {}
    for item in catalog["events"]:
        event, _ = Event.objects.update_or_create(
            key=item["key"],
            defaults={
                "category": categories[item["category"]],
                "default_channels": item.get("defaultChannels", []),
                "description": item.get("description", ""),
            },
        )
        events[event.key] = event
    created = updated = 0
    for event_key, event in events.items():
        for (channel, locale), fields in _template_files(root / event_key).items():
            for source in fields.values():
                validate_template_source(source)
            template = Template.objects.filter(event=event, channel=channel, locale=locale).first()
            if template is None:
                Template.objects.create(event=event, channel=channel, locale=locale, **fields)
                created += 1
            elif overwrite:
                for name, value in fields.items():
                    setattr(template, name, value)
                template.version += 1
                template.save()
                updated += 1
    return CatalogLoadResult(len(categories), len(events), created, updated)


def _template_files(directory: Path) -> dict[tuple[str, str], dict[str, str]]:
    found: dict[tuple[str, str], dict[str, str]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if not match:
            continue
        key = (match["channel"], canonical_locale(match["locale"] or ""))
        text = path.read_text()
        field = _PART_FIELD[match["part"]]
        found.setdefault(key, {})[field] = text if field == "html_body" else text.strip()
    return found
