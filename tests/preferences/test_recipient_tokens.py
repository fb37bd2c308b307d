"""Recipient tokens: minted with an API key's `tokens` scope, checked without trusting the
client, revoked per recipient, useless to anyone but their recipient."""

from __future__ import annotations

import time

import pytest
from django.core import signing
from django.test import override_settings
from rest_framework.test import APIClient

from preferences import access
from tests.factories import InboxMessageFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def mint(api_client: APIClient, user_id: str, **body: object) -> dict:
    response = api_client.post(f"/api/recipients/{user_id}/tokens", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def inbox(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_a_minted_token_reads_its_recipients_inbox_for_an_hour_by_default(api_client):
    recipient = RecipientFactory(external_id="ana")
    InboxMessageFactory(recipient=recipient, title="Hello Ana")

    before = time.time()
    minted = mint(api_client, "ana")

    assert minted["userId"] == "ana"
    expires = access.token_verify(minted["token"]).expires_at
    assert before + 3600 - 1 <= expires <= time.time() + 3600
    listed = inbox(minted["token"]).get("/api/inbox")
    assert listed.status_code == 200
    assert [m["title"] for m in listed.json()["results"]] == ["Hello Ana"]


def test_the_caller_chooses_the_lifetime_within_bounds(api_client):
    RecipientFactory(external_id="ana")
    minted = mint(api_client, "ana", expiresIn=120)
    assert access.token_verify(minted["token"]).expires_at <= time.time() + 120

    for bad in (59, 86401, "120", 120.5, True, None):
        response = api_client.post("/api/recipients/ana/tokens", {"expiresIn": bad}, format="json")
        assert response.status_code == 400, bad
        assert "expiresIn" in response.json()["error"]["fields"]
    assert (
        api_client.post("/api/recipients/ana/tokens", {"ttl": 5}, format="json").status_code == 400
    )


def test_minting_needs_the_tokens_scope_and_an_existing_recipient(limited_api_client, api_client):
    RecipientFactory(external_id="ana")
    without = limited_api_client("recipients", "read")
    assert without.post("/api/recipients/ana/tokens", {}, format="json").status_code == 403
    with_scope = limited_api_client("tokens")
    assert with_scope.post("/api/recipients/ana/tokens", {}, format="json").status_code == 201
    missing = api_client.post("/api/recipients/nobody/tokens", {}, format="json")
    assert missing.status_code == 404


def test_an_expired_token_is_refused(api_client):
    ana = RecipientFactory(external_id="ana")
    expired, _ = access.token_mint(recipient_id=ana.pk, generation=0, ttl_seconds=-1)

    response = inbox(expired).get("/api/inbox")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response["WWW-Authenticate"] == "Bearer"
    with pytest.raises(access.InvalidToken, match="expired"):
        access.token_verify(expired)


def test_a_tampered_token_is_refused(api_client):
    RecipientFactory(external_id="ana")
    bob = RecipientFactory(external_id="bob")
    token = mint(api_client, "ana")["token"]
    signature = token.rpartition(":")[2]
    # Claims naming Bob (signed with another salt) under Ana's signature.
    bobs_claims = signing.dumps({"r": bob.pk, "g": 0, "e": int(time.time()) + 3600}, salt="x")
    forgeries = [
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        f"{bobs_claims.rpartition(':')[0]}:{signature}",
        bobs_claims,
        "x.y.z",
    ]

    for forged in forgeries:
        assert inbox(forged).get("/api/inbox").status_code == 401, forged
    assert inbox(token).get("/api/inbox").status_code == 200


def test_a_token_signed_with_a_retired_key_works_while_it_is_a_fallback(api_client):
    RecipientFactory(external_id="ana")
    with override_settings(SECRET_KEY="old-key-" + "x" * 50):
        token = mint(api_client, "ana")["token"]
    with override_settings(
        SECRET_KEY="new-key-" + "y" * 50, SECRET_KEY_FALLBACKS=["old-key-" + "x" * 50]
    ):
        assert inbox(token).get("/api/inbox").status_code == 200
    with override_settings(SECRET_KEY="new-key-" + "y" * 50, SECRET_KEY_FALLBACKS=[]):
        assert inbox(token).get("/api/inbox").status_code == 401


def test_revoking_ends_every_token_minted_before_and_not_the_next_ones(api_client):
    RecipientFactory(external_id="ana")
    first, second = mint(api_client, "ana")["token"], mint(api_client, "ana")["token"]

    assert api_client.delete("/api/recipients/ana/tokens").status_code == 204

    assert inbox(first).get("/api/inbox").status_code == 401
    assert inbox(second).get("/api/inbox").status_code == 401
    assert inbox(mint(api_client, "ana")["token"]).get("/api/inbox").status_code == 200


def test_an_erased_recipients_tokens_stop_working(api_client):
    RecipientFactory(external_id="ana")
    token = mint(api_client, "ana")["token"]

    assert api_client.delete("/api/recipients/ana").status_code == 204

    assert inbox(token).get("/api/inbox").status_code == 401


def test_an_api_key_opens_no_inbox_and_a_recipient_token_nothing_else(api_client, api_key):
    RecipientFactory(external_id="ana")
    token = mint(api_client, "ana")["token"]

    assert api_client.get("/api/inbox").status_code == 401  # Api-Key: not this API's scheme
    assert inbox(token).get("/api/recipients/ana").status_code == 401
    assert inbox(token).get("/api/notifications").status_code == 401
    assert APIClient().get("/api/inbox").status_code == 401
