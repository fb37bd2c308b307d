"""The page behind an e-mail's unsubscribe link (RFC 8058).

``GET /unsubscribe/<token>`` shows what the link does and a button; ``POST`` to the same URL
(the button, or the mail provider's one-click request with ``List-Unsubscribe=One-Click``)
turns the category off on e-mail for the recipient, without a login: the signed link is the
authorization (preferences.access), so the POST needs no CSRF token. A tampered link is a 400
page and an expired one a 410 page, never an error trace; doing it twice is the same as once.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from preferences import access, services
from preferences.models import Category


@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        claims = access.unsubscribe_verify(
            token, max_age_days=int(settings.NOTIFY_UNSUBSCRIBE_LINK_DAYS)
        )
    except access.ExpiredLink:
        return _page(
            request,
            410,
            "This link has expired",
            "Use the link in a more recent e-mail, or your notification settings.",
        )
    except access.InvalidLink:
        return _page(
            request,
            400,
            "This link does not work",
            "It may have been cut short or changed. Use the link in the e-mail as it is.",
        )
    category = Category.objects.filter(key=claims.category).first()
    name = (category.name or category.key) if category is not None else claims.category
    if request.method == "GET":
        return _page(
            request,
            200,
            "Unsubscribe?",
            f"You will no longer get {name} notifications by e-mail.",
            confirm=True,
            category=name,
        )
    if not services.preference_opt_out(
        recipient_id=claims.recipient_id, category_key=claims.category, channel=claims.channel
    ):
        return _page(
            request,
            410,
            "Nothing to unsubscribe from",
            "This address or this kind of e-mail no longer exists here.",
        )
    return _page(
        request, 200, "You are unsubscribed", f"You will no longer get {name} e-mails from us."
    )


def _page(
    request: HttpRequest, status: int, heading: str, message: str, **extra: object
) -> HttpResponse:
    context = {"heading": heading, "message": message, **extra}
    response = render(request, "preferences/unsubscribe.html", context, status=status)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"  # the link is a credential
    return response
