from __future__ import annotations

import logging

import redis
from celery import current_app
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from channels.gate import circuit
from notifications.api.errors import error_body

logger = logging.getLogger(__name__)


# Exempt so that a POST gets the 405 below, not CSRF's HTML 403 page: the view writes nothing.
@csrf_exempt
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when both the database and the broker answer, 503 (naming which failed) otherwise.

    ``providers`` names every provider whose circuit is not closed: "paused: <the
    configuration error>" (docs/reliability.md), "open: repeated failures", "probing". Such a
    provider leaves the answer 200 with status "degraded": this process can still accept and
    queue, and a 503 would only make an orchestrator restart or unroute the API, which fixes
    no provider setting and would stop accepting notifications.

    Anything but GET and HEAD is a 405 in the API's error shape.
    """
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(
            error_body("method_not_allowed", "Only GET and HEAD are allowed."), status=405
        )
        response["Allow"] = "GET, HEAD"
        return response
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    healthy = all(checks.values())
    providers = _providers()
    status = "ok" if healthy else "unavailable"
    if healthy and providers:
        status = "degraded"
    return JsonResponse(
        {
            "status": status,
            **{name: "ok" if ok else "unavailable" for name, ok in checks.items()},
            "providers": providers,
        },
        status=200 if healthy else 503,
    )


def _providers() -> dict[str, str]:
    try:
        return {name: state.describe() for name, state in circuit.not_closed().items()}
    except redis.RedisError:
        # Where circuits live is away: providers are called as if closed (channels/gate/guard.py).
        logger.warning("health: guard Redis unavailable", exc_info=True)
        return {}


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("health: database unavailable", exc_info=True)
        return False


def _broker_ok() -> bool:
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            return True
    except Exception:
        logger.warning("health: broker unavailable", exc_info=True)
        return False
