"""The inbox demo page (``/demo/inbox``): the web component signed in as the demo recipient.

On only with NOTIFY_DEMO_PAGE (``make run`` sets it; a system check warns when it is on): the
page hands a token of NOTIFY_DEMO_USER_ID to whoever opens it.
"""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from preferences import access
from preferences import selectors as recipients


@require_safe
def inbox_demo(request: HttpRequest) -> HttpResponse:
    if not settings.NOTIFY_DEMO_PAGE:
        raise Http404("the demo page is off")
    recipient = recipients.recipient_get(external_id=settings.NOTIFY_DEMO_USER_ID)
    if recipient is None:
        raise Http404("no demo recipient: manage.py seed_demo creates it")
    ttl = int(settings.NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS)
    token, _ = access.token_mint(
        recipient_id=recipient.pk, generation=recipient.token_generation, ttl_seconds=ttl
    )
    context = {
        "token": token,
        "user_id": recipient.external_id,
        "ttl_minutes": ttl // 60,
        "api_base": request.build_absolute_uri("/").rstrip("/"),
    }
    response = render(request, "notifications/demo_inbox.html", context)
    response["Cache-Control"] = "no-store"  # it carries a token
    return response
