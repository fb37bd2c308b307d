"""Turning a Template and a notification's data into the content a provider sends."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError
from django.template.base import Template as CompiledTemplate

from notifications.locales import locale_chain
from notifications.models import Template

# Plain-text channels must not HTML-escape ("&" in an SMS stays "&"); email HTML must.
# Both see templates/ so an email body can {% extends %} a shipped layout.
_TEMPLATE_DIRS = [str(settings.BASE_DIR / "templates")]
_TEXT_ENGINE = Engine(dirs=_TEMPLATE_DIRS, autoescape=False)
_HTML_ENGINE = Engine(dirs=_TEMPLATE_DIRS, autoescape=True)


class TemplateRenderError(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> CompiledTemplate:
    engine = _HTML_ENGINE if html else _TEXT_ENGINE
    return engine.from_string(source)


def validate_template_source(source: str) -> None:
    try:
        _compile(source, False)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(str(exc)) from exc


def pick_templates(templates: Iterable[Template], *, locale: str) -> dict[str, Template]:
    """For each channel, the template of the most specific matching locale."""
    chain = locale_chain(locale)
    rank = {loc: i for i, loc in enumerate(chain)}
    best: dict[str, Template] = {}
    for template in templates:
        if template.locale not in rank:
            continue
        current = best.get(template.channel)
        if current is None or rank[template.locale] < rank[current.locale]:
            best[template.channel] = template
    return best


def render_template(template: Template, context: dict[str, Any]) -> dict[str, str]:
    """Rendered fields of ``template``; empty ones are left out."""
    # Escaping follows the Context, not the Engine: text gets a non-escaping one.
    text_ctx = Context(context, autoescape=False)
    try:
        rendered = {
            # One line wherever it goes (email header, push or inbox title): a line break from
            # data must not start a new header. Django refuses one outright (BadHeaderError),
            # which would fail the delivery instead.
            "subject": " ".join(
                _compile(template.subject, False).render(text_ctx).splitlines()
            ).strip(),
            "body": _compile(template.body, False).render(text_ctx).strip(),
            "html": _render_html(template.html_body, context) if template.html_body else "",
            "url": _compile(template.url, False).render(text_ctx).strip() if template.url else "",
        }
    # A missing {% include %}/{% extends %} file only shows at render time, not when the
    # admin validated the source: a template data error like a syntax error, not a 500.
    except (TemplateSyntaxError, TemplateDoesNotExist) as exc:
        raise TemplateRenderError(f"template {template}: {exc}") from exc
    rendered = {key: value for key, value in rendered.items() if value}
    rendered["templateId"] = str(template.pk)
    rendered["templateVersion"] = str(template.version)
    rendered["locale"] = template.locale
    return rendered


def _render_html(source: str, context: dict[str, Any]) -> str:
    return _compile(source, True).render(Context(context, autoescape=True))
