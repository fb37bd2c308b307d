"""Twilio status callbacks. (Placeholder until the SMS provider lands in this module.)"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def status_callback(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=501)
