"""API keys: scopes decide what a key may call; keys are stored hashed and can be revoked."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.views import APIView
from rest_framework_api_key.models import APIKey

from notifications.api.auth import ApiKeyClient
from notifications.api.permissions import HasScope
from notifications.models import ApiKeyAccess, ApiScope, Notification
from notifications.services.api_keys import ALL_SCOPES
from preferences.models import Recipient
from tests.conftest import client_for
from tests.factories import RecipientFactory, create_api_key

pytestmark = pytest.mark.django_db

NOTIFY, BROADCAST, READ, RECIPIENTS, TOKENS = "notify", "broadcast", "read", "recipients", "tokens"
SOME_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"

# Every operation of the API and the scope it needs (SECURITY.md has the same table).
OPERATIONS = [
    ("post", "/api/notify", NOTIFY),
    ("get", "/api/notifications", READ),
    ("get", f"/api/notifications/{SOME_ID}", READ),
    ("post", "/api/broadcasts", BROADCAST),
    ("get", f"/api/broadcasts/{SOME_ID}", BROADCAST),
    ("post", f"/api/broadcasts/{SOME_ID}/cancel", BROADCAST),
    ("get", "/api/recipients/u-1", RECIPIENTS),
    ("put", "/api/recipients/u-1", RECIPIENTS),
    ("delete", "/api/recipients/u-1", RECIPIENTS),
    ("get", "/api/recipients/u-1/devices", RECIPIENTS),
    ("post", "/api/recipients/u-1/devices", RECIPIENTS),
    ("delete", "/api/recipients/u-1/devices/1", RECIPIENTS),
    ("get", "/api/recipients/u-1/preferences", RECIPIENTS),
    ("put", "/api/recipients/u-1/preferences", RECIPIENTS),
    ("get", "/api/suppressions", RECIPIENTS),
    ("post", "/api/suppressions", RECIPIENTS),
    ("delete", "/api/suppressions/1", RECIPIENTS),
    ("get", "/api/topics/news", RECIPIENTS),
    ("put", "/api/topics/news", RECIPIENTS),
    ("get", "/api/topics/news/subscribers", RECIPIENTS),
    ("post", "/api/topics/news/subscribers", RECIPIENTS),
    ("delete", "/api/topics/news/subscribers", RECIPIENTS),
    ("post", "/api/recipients/u-1/tokens", TOKENS),
    ("delete", "/api/recipients/u-1/tokens", TOKENS),
]

# The inbox API takes a recipient token, never an API key (tests/notifications/test_inbox_api.py).
RECIPIENT_OPERATIONS = [
    ("get", "/api/inbox"),
    ("get", "/api/inbox/count"),
    ("post", "/api/inbox/read-all"),
    ("get", "/api/inbox/preferences-link"),
    *(("post", f"/api/inbox/1/{a}") for a in ("read", "unread", "seen", "archive", "unarchive")),
]


def _call(client: APIClient, method: str, path: str):
    return getattr(client, method)(path, {}, format="json")


def test_every_api_operation_is_in_the_table(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    documented = [
        (method, re.compile(re.sub(r"\{[^}]+\}", "[^/]+", template)))
        for template, item in schema["paths"].items()
        for method in item
    ]

    known = [(m, p) for m, p, _ in OPERATIONS] + RECIPIENT_OPERATIONS
    assert len(documented) == len(known)
    for method, pattern in documented:
        assert any(m == method and pattern.fullmatch(p) for m, p in known), pattern


@pytest.mark.parametrize(("method", "path"), RECIPIENT_OPERATIONS)
def test_no_api_key_opens_the_inbox_api(limited_api_client, method, path):
    every_scope = limited_api_client(*ALL_SCOPES)

    refused = _call(every_scope, method, path)

    assert refused.status_code == 401
    assert refused["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "scope"), OPERATIONS)
def test_each_operation_needs_its_scope(limited_api_client, method, path, scope):
    without = limited_api_client(*(s for s in ALL_SCOPES if s != scope))
    only = limited_api_client(scope)

    refused = _call(without, method, path)
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "forbidden",
        "message": f"This API key lacks the '{scope}' scope.",
    }
    assert _call(only, method, path).status_code != 403


def test_a_notify_only_key_sends_but_reads_no_personal_data(limited_api_client, order_shipped):
    notifier = limited_api_client(NOTIFY)
    recipient = RecipientFactory(email="jane@example.com")

    sent = notifier.post(
        "/api/notify",
        {"userId": recipient.external_id, "event": "order_shipped", "data": {"orderId": "1"}},
        format="json",
    )
    assert sent.status_code == 202

    for path in (
        "/api/notifications",
        f"/api/notifications/{sent.json()['id']}",
        f"/api/recipients/{recipient.external_id}",
        f"/api/recipients/{recipient.external_id}/devices",
        "/api/suppressions",
    ):
        response = notifier.get(path)
        assert response.status_code == 403, path
        assert b"jane@example.com" not in response.content
    assert notifier.delete(f"/api/recipients/{recipient.external_id}").status_code == 403
    assert Recipient.objects.filter(pk=recipient.pk).exists()


def test_a_refused_write_changes_nothing(limited_api_client):
    reader = limited_api_client(READ)

    assert reader.put("/api/recipients/u-9", {"email": "a@example.com"}).status_code == 403
    assert reader.post("/api/notify", {"userId": "u-9", "event": "x"}).status_code == 403
    assert not Recipient.objects.exists()
    assert not Notification.objects.exists()


def test_a_key_without_an_access_row_may_call_nothing():
    _, key = APIKey.objects.create_key(name="made-by-hand")

    assert client_for(key).get("/api/notifications").status_code == 403


def test_a_view_that_names_no_scope_is_closed_even_to_a_key_with_every_scope():
    client = ApiKeyClient(create_api_key(scopes=ALL_SCOPES)[0])
    request = SimpleNamespace(user=client)

    class Unscoped(APIView):
        pass

    class Scoped(APIView):
        required_scope = ApiScope.READ

    assert HasScope().has_permission(request, Unscoped()) is False  # type: ignore[arg-type]
    assert HasScope().has_permission(request, Scoped()) is True  # type: ignore[arg-type]


def test_keys_are_stored_hashed_only():
    api_key, key = create_api_key()

    prefix, _, secret = key.partition(".")
    stored = APIKey.objects.filter(pk=api_key.pk).values().get()
    assert stored["prefix"] == prefix
    assert stored["hashed_key"].startswith("sha512$$")
    assert not any(secret in str(value) for value in stored.values())


def test_revoked_and_expired_keys_are_refused():
    revoked, revoked_key = create_api_key()
    expired, expired_key = create_api_key()
    revoked.revoked = True
    revoked.save()
    expired.expiry_date = timezone.now() - timedelta(seconds=1)
    expired.save()

    for key in (revoked_key, expired_key, "nosuch12.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"):
        response = client_for(key).get("/api/notifications")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_a_wrong_secret_with_a_real_prefix_is_refused():
    _, key = create_api_key()
    prefix, _, secret = key.partition(".")

    assert client_for(f"{prefix}.{secret[::-1]}").get("/api/notifications").status_code == 401


# --- create_api_key ------------------------------------------------------------------------


def _create(*args: str) -> APIKey:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=io.StringIO())
    key = out.getvalue().strip().splitlines()[-1]
    return APIKey.objects.select_related("access").get(prefix=key.partition(".")[0])


def test_create_api_key_gives_every_scope_by_default():
    assert sorted(_create("orders").access.scopes) == sorted(ALL_SCOPES)


def test_create_api_key_with_scopes_and_a_rate_limit():
    api_key = _create("orders", "--scopes", "notify, read", "--rate-limit", "50/second")

    assert api_key.access.scopes == ["notify", "read"]
    assert api_key.access.rate_limit == "50/second"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--scopes", "notify,admin"], "Unknown scope(s) admin"),
        (["--rate-limit", "lots"], "not a rate limit"),
    ],
)
def test_create_api_key_refuses_what_it_does_not_know(args, error):
    with pytest.raises(CommandError, match=error.replace("(", r"\(").replace(")", r"\)")):
        call_command("create_api_key", "x", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert not APIKey.objects.exists()


def test_keys_made_before_scopes_existed_get_every_scope():
    from importlib import import_module

    migration = import_module("notifications.migrations.0004_api_key_access_and_replay_permission")
    old, _ = APIKey.objects.create_key(name="old")

    migration.give_existing_keys_every_scope(apps, None)

    # Every scope there was; a scope added since (tokens) is given by an operator, not assumed.
    assert ApiKeyAccess.objects.get(api_key=old).scopes == [NOTIFY, BROADCAST, READ, RECIPIENTS]
    assert migration.ALL_SCOPES_AT_INTRODUCTION == [NOTIFY, BROADCAST, READ, RECIPIENTS]
