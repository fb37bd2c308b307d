"""Who gets what in a broadcast: each recipient's deliveries, decided page by page.

The decisions are the accept path's (``planning.skip_reasons``, then the template for the
recipient's locale);
only the inputs arrive for a whole page at once (``preferences.selectors.audience_page``).
Templates are rendered once per page unless they read recipient fields.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from django.template import TemplateDoesNotExist
from django.template.loader import get_template

from notifications.models import DeliveryStatus, Template
from notifications.rendering import TemplateRenderError, pick_templates, render_template
from notifications.selectors import EventCatalog
from notifications.services import planning
from preferences.selectors import AudienceMember

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planned:
    channel: str
    status: str
    reason: str = ""
    content: dict[str, Any] | None = None


class Planner:
    """Decides each recipient's deliveries with the same rules as the accept path, and
    renders each template once per page unless it reads recipient fields."""

    def __init__(self, catalog: EventCatalog, channels: list[str], data: dict[str, Any]) -> None:
        self._catalog = catalog
        self._channels = channels
        self._data = data
        self._templates: dict[str, dict[str, Template]] = {}  # by recipient locale
        self._shared: dict[int, dict[str, str] | TemplateRenderError] = {}  # by template id
        self._configured = planning.configured_channels()

    def plan(self, recipient: AudienceMember, notification_id: uuid.UUID) -> list[Planned]:
        event = self._catalog.event
        reasons = planning.skip_reasons(
            planning.Reach(
                email=recipient.email,
                phone=recipient.phone or None,
                has_device=bool(recipient.device_platforms),
                email_suppressed=recipient.email_suppressed,
                phone_suppressed=recipient.phone_suppressed,
                rules=recipient.preference_rules,
            ),
            channels=self._channels,
            category_id=event.category_id,
            critical=event.category.critical,
            configured=self._configured,
        )
        templates = self._templates_for(recipient.locale)
        plan: list[Planned] = []
        for channel in self._channels:
            reason = reasons[channel]
            if reason is None and channel not in templates:
                reason = "no_template"
            content = None
            if reason is None:
                try:
                    content = self._render(templates[channel], recipient, notification_id)
                except TemplateRenderError:
                    # Checked at accept; only a template edited since can get here.
                    logger.warning("broadcast template %s fails to render", templates[channel])
                    reason = "template_error"
            if reason is not None:
                plan.append(Planned(channel, DeliveryStatus.SKIPPED, reason=reason))
            else:
                plan.append(Planned(channel, DeliveryStatus.QUEUED, content=content))
        return plan

    def _templates_for(self, locale: str) -> dict[str, Template]:
        if locale not in self._templates:
            self._templates[locale] = pick_templates(self._catalog.templates, locale=locale)
        return self._templates[locale]

    def _render(
        self, template: Template, recipient: AudienceMember, notification_id: uuid.UUID
    ) -> dict[str, str]:
        context: dict[str, Any] = {**self._data, "data": self._data}
        context["event"] = self._catalog.event.key
        if uses_recipient_fields(template):
            # The accept path's context, field for field.
            context["recipient"] = {
                "id": recipient.external_id,
                "email": recipient.email or "",
                "locale": recipient.locale,
            }
            context["notification_id"] = str(notification_id)
            return render_template(template, context)
        shared = self._shared.get(template.pk)
        if shared is None:
            try:
                shared = render_template(template, context)
            except TemplateRenderError as exc:
                shared = exc
            self._shared[template.pk] = shared
        if isinstance(shared, TemplateRenderError):
            raise shared
        return shared


# What differs between two recipients of a broadcast: their own fields and the notification.
_PER_RECIPIENT = re.compile(r"\b(?:recipient|notification_id)\b")
_REFERENCES = re.compile(r"{%\s*(?:extends|include)\s+(\S+)")


def uses_recipient_fields(template: Template) -> bool:
    """Whether rendering ``template`` can depend on who receives it (then it is rendered
    per recipient; otherwise once per page). Follows {% extends %} / {% include %}."""
    return any(
        _source_uses_recipient(source, 0)
        for source in (template.subject, template.body, template.html_body, template.url)
        if source
    )


@functools.lru_cache(maxsize=1024)
def _source_uses_recipient(source: str, depth: int) -> bool:
    if _PER_RECIPIENT.search(source):
        return True
    for name in _REFERENCES.findall(source):
        if depth > 8 or name[0] not in "'\"":
            return True  # a template chosen at render time: cannot tell, so assume it does
        try:
            # The backend wrapper's Django Template carries the source text.
            included = str(get_template(name.strip("'\"")).template.source)  # type: ignore[attr-defined]
        except TemplateDoesNotExist:
            return True
        if _source_uses_recipient(included, depth + 1):
            return True
    return False
