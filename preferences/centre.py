"""The preference centre (``/preferences/<signed link>``): a recipient's categories by channels.

Reached by a signed link (``preferences.access.preference_centre_url``: in the token mint's
answer, ``GET /api/inbox/preferences-link`` for the web component), valid
NOTIFY_PREFERENCE_LINK_DAYS and until the recipient's tokens are revoked. A plain HTML form,
no JavaScript needed: each checkbox has its label, critical categories are shown on and
locked (they ignore opt-outs when sent). Saving writes the same rules as
``PUT /api/recipients/{userId}/preferences``, which sending then applies.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from channels.base import Channel
from preferences import access, selectors, services
from preferences.models import Recipient

CHANNEL_NAMES = {"email": "E-mail", "sms": "SMS", "push": "Push", "inapp": "In the app"}


@csrf_exempt  # the signed link is the authorization: another site cannot know it
@require_http_methods(["GET", "POST"])
def preference_centre(request: HttpRequest, token: str) -> HttpResponse:
    try:
        claims = access.preference_centre_verify(
            token, max_age_days=int(settings.NOTIFY_PREFERENCE_LINK_DAYS)
        )
    except access.ExpiredLink:
        return _page(request, 410, heading="This link has expired",
                     message="Ask for a new link from the app or a recent message.")  # fmt: skip
    except access.InvalidLink:
        return _page(request, 400, heading="This link does not work",
                     message="It may have been cut short or changed. Use it as it is.")  # fmt: skip
    recipient = Recipient.objects.filter(
        pk=claims.recipient_id, token_generation=claims.generation
    ).first()
    if recipient is None:
        return _page(request, 410, heading="This link no longer works",
                     message="Ask for a new link from the app.")  # fmt: skip
    saved = False
    if request.method == "POST":
        allowed = set()
        for name in request.POST:
            category, _, channel = name.removeprefix("allow:").partition(":")
            if name.startswith("allow:") and category.isdigit() and channel in Channel.values:
                allowed.add((int(category), channel))
        services.preference_centre_save(recipient=recipient, allowed=allowed)
        saved = True
    channels = [(channel, CHANNEL_NAMES.get(channel, channel)) for channel in Channel.values]
    rows = [
        {
            "name": row.category.name or row.category.key,
            "critical": row.category.critical,
            "cells": [
                {
                    "field": f"allow:{row.category.pk}:{channel}",
                    "label": f"{label} for {row.category.name or row.category.key}",
                    "on": row.allowed[channel],
                }
                for channel, label in channels
            ],
        }
        for row in selectors.preference_centre(recipient_id=recipient.pk)
    ]
    return _page(
        request,
        200,
        heading="Your notification settings",
        message="",
        rows=rows,
        channels=channels,
        saved=saved,
    )


def _page(request: HttpRequest, status: int, **context: object) -> HttpResponse:
    response = render(request, "preferences/centre.html", context, status=status)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"  # the link is a credential
    return response
