"""Hostile input to the JSON API: bodies, headers, paths and query strings.

Each case must get a 4xx answer in the documented error shape and write nothing. The rules are
in docs/api-input.md; each table below names the rule it probes. In-process (Django's test
client on the real PostgreSQL test database), so it is fast; the layers in front of Django
(nginx, gunicorn) have their own tests.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client

from notifications.models import Broadcast, Delivery, Notification
from preferences.models import Preference, Recipient, Suppression, Topic, TopicSubscription
from tests.factories import RecipientFactory

pytestmark = pytest.mark.django_db

MODELS = [Recipient, Notification, Delivery, Broadcast, Preference, Suppression, TopicSubscription]


@pytest.fixture
def world(order_shipped: Any) -> None:
    RecipientFactory(external_id="u-1")
    Topic.objects.create(key="news")


@pytest.fixture
def raw(api_key: tuple[Any, str], world: None) -> Client:
    """A plain Django client: the body is sent as given, byte for byte."""
    return Client(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in MODELS}


def assert_refused(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) <= {"code", "message", "fields"}
    assert error["code"] and error["message"]
    if field is not None:
        assert field in error.get("fields", {}), error
    return error


def send(client: Client, method: str, path: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra.setdefault("content_type", "application/json")
    return client.generic(method, path, data, **extra)


NOTIFY = {"userId": "u-1", "event": "order_shipped"}
LONG_ID = "u" * 256

# (method, path, body, field): each refused with 400 naming the field.
BODIES = [
    # phone: international form, ASCII digits; no keypad letters, no other scripts' digits
    ("PUT", "/api/recipients/u-1", {"phone": "+1415CALLNOW"}, "phone"),
    ("PUT", "/api/recipients/u-1", {"phone": "+١٤١٥٥٥٥٠١٠٠"}, "phone"),
    ("PUT", "/api/recipients/u-1", {"phone": 14155550100}, "phone"),
    ("PUT", "/api/recipients/u-1", {"phone": "+14155550100\n"}, "phone"),
    # locale: a BCP 47 tag
    ("PUT", "/api/recipients/u-1", {"locale": "xx_YY_ZZ_123456"}, "locale"),
    ("PUT", "/api/recipients/u-1", {"locale": "en\n"}, "locale"),
    ("PUT", "/api/recipients/u-1", {"locale": "e" * 36}, "locale"),
    # timezone: an IANA name
    ("PUT", "/api/recipients/u-1", {"timezone": "0" * 63}, "timezone"),
    ("PUT", "/api/recipients/u-1", {"timezone": "Europe/Lisbon "}, "timezone"),
    ("PUT", "/api/recipients/u-1", {"email": " ana@example.com"}, "email"),
    # email: no invisible characters (the ESP would get another address than the one stored
    # and suppressed), no domain literal (mail to an IP address of the caller's choice)
    *[
        ("PUT", "/api/recipients/u-1", {"email": v}, "email")
        for v in (
            "e3@example.com\u200b",
            "e3\ufeff@example.com",
            "e3@exa\u2028mple.com",
            "e3@example.com\u2029",
            "e3@exam\u202eple.com",
            "e2@[127.0.0.1]",
            "e2@[IPv6:::1]",
            "\u017f@example.com",  # long s: Django's validator takes it as "s", ignoring case
        )
    ],
    # timezone: a zone, not the host's "localtime" nor the placeholder "Factory"
    ("PUT", "/api/recipients/u-1", {"timezone": "localtime"}, "timezone"),
    ("PUT", "/api/recipients/u-1", {"timezone": "Factory"}, "timezone"),
    # booleans: JSON true or false only
    *[
        ("PUT", "/api/recipients/u-1/preferences", {"preferences": [{"enabled": v}]}, "preferences")
        for v in ("no", 0, 1, "true", None, [], {})
    ],
    *[
        ("POST", "/api/broadcasts", {"event": "order_shipped", "audience": {"all": v}}, "audience")
        for v in (False, "yes", 1)
    ],
    ("POST", "/api/broadcasts", {"event": "order_shipped", "audience": {}}, "audience"),
    # userId: no white space, control characters, "/" or "%"; at most 255; a string
    *[
        ("POST", "/api/notify", {**NOTIFY, "userId": v}, "userId")
        for v in ("u 1", "u/1", "a%FFb", "u\x00", "u\x7f", "u\u2028", "", LONG_ID, 42, True, None)
    ],
    # nor format characters, invisible: "u-1\u200b" would look like u-1
    *[
        ("POST", "/api/notify", {**NOTIFY, "userId": v}, "userId")
        for v in ("u-1\u200b", "\ufeffu-1", "u\u00ad1", "u\u2060", "u-1\U000e0001")
    ],
    # event: a slug
    *[
        ("POST", "/api/notify", {**NOTIFY, "event": v}, "event")
        for v in ("order shipped", "order_shipped\n", 42, ["order_shipped"], "e" * 65)
    ],
    # lists: not empty, no duplicates, entries of the right type
    *[
        ("POST", "/api/notify", {**NOTIFY, "channels": v}, "channels")
        for v in ([], ["email", "email"], "email", [1], [None], ["email"] * 5)
    ],
    ("POST", "/api/notify", {**NOTIFY, "priority": 1}, "priority"),
    ("POST", "/api/notify", {**NOTIFY, "idempotencyKey": "k\x01"}, "idempotencyKey"),
    ("POST", "/api/notify", {**NOTIFY, "idempotencyKey": "k" * 256}, "idempotencyKey"),
    ("POST", "/api/notify", {**NOTIFY, "data": {"k": "v\x00"}}, "data"),
    ("POST", "/api/notify", {**NOTIFY, "data": [1]}, "data"),
    ("POST", "/api/notify", {**NOTIFY, "unknown": 1}, "unknown"),
    *[
        (
            "POST",
            "/api/broadcasts",
            {"event": "order_shipped", "audience": {"userIds": v}},
            "audience",
        )
        for v in ([], ["u-1", "u-1"], ["u/1"], "u-1")
    ],
    *[
        ("POST", "/api/topics/news/subscribers", {"userIds": v}, "userIds")
        for v in ([], ["u-1", "u-1"], ["a%FFb"], [LONG_ID])
    ],
    # free text is taken as sent: the length is the length sent, white space included
    ("PUT", "/api/topics/news", {"name": " " * 300 + "News"}, "name"),
    ("PUT", "/api/topics/news", {"name": "News\x1b[31m"}, "name"),
    ("POST", "/api/suppressions", {"channel": "sms", "address": "+1415CALLNOW"}, "address"),
    ("POST", "/api/suppressions", {"channel": "email", "address": "x"}, "address"),
    *[
        ("POST", "/api/suppressions", {"channel": "email", "address": v}, "address")
        for v in ("e3@example.com\u200b", "e3@exa\u2028mple.com", "e2@[127.0.0.1]")
    ],
    ("POST", "/api/suppressions", {"channel": 1, "address": "a@example.com"}, "channel"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), BODIES)
def test_a_hostile_body_is_refused_and_writes_nothing(raw, method, path, body, field):
    before = counts()
    assert_refused(send(raw, method, path, body), 400, field)
    assert counts() == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"userId": "u-1", "event": "order_shipped", "data": {"k": "\\ud800"}}',  # lone surrogate
        b'{"userId": "\\udfff", "event": "order_shipped"}',
        b'{"userId": "u-1", "event": "order_shipped", "data": ' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"userId": "u-1", "event": "order_shipped", "data": {"n": 1e400}}',
        b'{"userId": "u-1", "event": "order_shipped", "data": {"n": NaN}}',
        b"[" * 50_000,
        b'{"userId": "u-1", "userId": "u-2"',
        b"\xff\xfe{}",
        b"",
        # A repeated key: the last won, where a proxy or a log reader may take the first.
        b'{"userId": "u-1", "userId": "u-2", "event": "order_shipped"}',
        b'{"userId": "u-1", "event": "order_shipped", "data": {"k": 1, "k": 2}}',
    ],
    ids=[
        "surrogate",
        "surrogate-id",
        "deep",
        "huge-float",
        "nan",
        "stack",
        "cut",
        "bom",
        "empty",
        "duplicate-key",
        "duplicate-nested-key",
    ],
)
def test_malformed_json_is_refused_and_writes_nothing(raw, body):
    before = counts()
    assert_refused(send(raw, "POST", "/api/notify", body), 400)
    assert counts() == before


VALID = json.dumps(NOTIFY).encode()

# (extra WSGI environ / client arguments, status)
HEADERS = [
    ({"content_type": "text/plain"}, 415),
    ({"content_type": "application/x-www-form-urlencoded"}, 415),
    ({"content_type": "application/json; charset=latin-1"}, 415),
    ({"content_type": "application/json; charset=utf-16"}, 415),
    # Content-Length disagreeing with the body (Django reads what it announces, at most)
    ({"CONTENT_LENGTH": "1000", "wsgi.input": io.BytesIO(VALID[:10])}, 400),
    ({"CONTENT_LENGTH": "10"}, 400),
    ({"CONTENT_LENGTH": "abc"}, 400),
    ({"CONTENT_LENGTH": "-1"}, 400),
    # Authorization: duplicates arrive joined with ", "; junk around the key
    ({"HTTP_AUTHORIZATION": "{key}, {key}"}, 401),
    ({"HTTP_AUTHORIZATION": "Api-Key"}, 401),
    ({"HTTP_AUTHORIZATION": "Bearer x"}, 401),
    ({"HTTP_AUTHORIZATION": "Api-Key \x00"}, 401),
    ({"HTTP_IDEMPOTENCY_KEY": ""}, 400),
    ({"HTTP_IDEMPOTENCY_KEY": "k" * 256}, 400),
    ({"HTTP_IDEMPOTENCY_KEY": "k\x01"}, 400),
    # "ké" sent as UTF-8 reaches Django as latin-1 ("kÃ©"): not the body's "ké"
    ({"HTTP_IDEMPOTENCY_KEY": "ké".encode().decode("latin-1")}, 400),
]


@pytest.mark.parametrize(("extra", "status"), HEADERS)
def test_hostile_headers_are_refused_and_write_nothing(raw, api_key, extra, status):
    extra = {
        name: value.format(key=f"Api-Key {api_key[1]}") if name == "HTTP_AUTHORIZATION" else value
        for name, value in extra.items()
    }
    before = counts()
    assert_refused(send(raw, "POST", "/api/notify", VALID, **extra), status)
    assert counts() == before


# (method, path, status, field)
PATHS = [
    ("PUT", "/api/recipients/a%FFb", 400, "userId"),  # invalid UTF-8: Django re-encodes it
    ("PUT", "/api/recipients/a%25FFb", 400, "userId"),  # the same string, sent as such
    ("PUT", "/api/recipients/a%00b", 400, "userId"),
    ("PUT", "/api/recipients/a%20b", 400, "userId"),
    ("PUT", "/api/recipients/a%0Ab", 400, "userId"),
    ("PUT", "/api/recipients/%E2%80%A8", 400, "userId"),
    ("PUT", f"/api/recipients/{LONG_ID}", 400, "userId"),
    ("GET", "/api/recipients/a%00b/devices", 400, "userId"),
    ("PUT", "/api/recipients/a%00b/preferences", 400, "userId"),
    ("GET", "/api/recipients/u-1/devices/99999999999999999999999", 405, None),
    ("DELETE", "/api/recipients/u-1/devices/99999999999999999999999", 404, None),
    ("GET", "/api/notifications/not-a-uuid", 404, None),
    ("GET", "/api/notifications/%00", 404, None),
    ("GET", "/api/broadcasts/..%2F..%2Fetc", 404, None),
    ("GET", "/api/topics/a%00b", 404, None),  # was a 500: PostgreSQL text holds no NUL
    ("GET", "/api/topics/a%00b/subscribers", 404, None),
    ("POST", "/api/topics/a%00b/subscribers", 404, None),
    ("PUT", "/api/topics/a%00b", 400, "key"),
    ("PUT", "/api/topics/" + "t" * 129, 400, "key"),
    ("GET", "/api/" + "x" * 3000, 404, None),
]


@pytest.mark.parametrize(("method", "path", "status", "field"), PATHS)
def test_hostile_paths_are_refused_and_write_nothing(raw, method, path, status, field):
    before = counts()
    body = {"userIds": ["u-1"]} if "subscribers" in path else {}
    assert_refused(send(raw, method, path, body), status, field)
    assert counts() == before


def b64(tokens: str) -> str:
    return quote(base64.b64encode(tokens.encode()).decode())


# (path, query string, field)
QUERIES = [
    ("/api/notifications", "status=sent&status=failed", "status"),
    ("/api/notifications", "cursor=%00", "cursor"),
    ("/api/notifications", "cursor=!!!!", "cursor"),
    ("/api/notifications", "cursor=", "cursor"),
    ("/api/notifications", "cursor=b0", "cursor"),  # "o" cut short: base64 without its padding
    ("/api/notifications", "cursor=eD0x", "cursor"),  # "x=1": not a cursor token
    ("/api/notifications", "cursor=bz0xJm89Mg%3D%3D", "cursor"),  # "o=1&o=2"
    ("/api/notifications", "pageSize=true", "pageSize"),
    ("/api/notifications", "pageSize=1.5", "pageSize"),
    ("/api/notifications", "pageSize=%205", "pageSize"),
    ("/api/notifications", "pageSize=%D9%A5", "pageSize"),  # an Arabic-Indic 5
    ("/api/notifications", "pageSize=05", "pageSize"),
    ("/api/notifications", "pageSize=", "pageSize"),
    ("/api/notifications", "pageSize=1&pageSize=2", "pageSize"),
    ("/api/notifications", "userId=", "userId"),
    ("/api/notifications", "userId=a%00b", "userId"),
    ("/api/notifications", "userId=a%2Fb", "userId"),
    ("/api/notifications", "userId=%ED%A0%80", "userId"),  # invalid UTF-8 (a surrogate)
    ("/api/notifications", "userId=%C0%80", "userId"),  # invalid UTF-8 (an overlong NUL)
    ("/api/notifications", "userId=%E2%80%8B", "userId"),  # U+200B
    ("/api/notifications", "event=a%20b", "event"),
    ("/api/notifications", "channel=EMAIL", "channel"),
    ("/api/notifications", "unknown=1", "unknown"),
    ("/api/notifications", "userid=u-1", "userid"),
    ("/api/suppressions", "address=a%00b", "address"),
    ("/api/suppressions", "channel=sms&channel=email", "channel"),
    ("/api/topics/news/subscribers", "foo=1", "foo"),
    ("/api/topics/news/subscribers", "cursor=!!!!", "cursor"),
    # forged cursors that are values of the ordering field (recipient_id): "r=1&p=1", "p=9…9"
    ("/api/topics/news/subscribers", "cursor=cj0xJnA9MQ%3D%3D", "cursor"),
    ("/api/topics/news/subscribers", f"cursor={b64('p=' + '9' * 30)}", "cursor"),
    ("/api/notifications", f"cursor={b64('p=2026-01-01T00:00:00Z')}", "cursor"),
    ("/api/recipients/u-1", "fields=all", "fields"),
]


@pytest.mark.parametrize(("path", "query", "field"), QUERIES)
def test_hostile_query_strings_are_refused(raw, path, query, field):
    assert_refused(raw.get(f"{path}?{query}"), 400, field)


def test_a_query_string_on_a_write_is_refused_and_writes_nothing(raw):
    before = counts()
    assert_refused(send(raw, "POST", "/api/notify?userId=u-2", NOTIFY), 400, "userId")
    assert counts() == before


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/recipients/u-1"),
        ("PUT", "/api/recipients/u-1/preferences"),
        ("PUT", "/api/topics/news"),
        ("POST", "/api/suppressions"),
        ("POST", "/api/topics/news/subscribers"),
    ],
)
def test_an_empty_body_is_refused_not_read_as_an_empty_object(raw, method, path, content_type):
    # PUT /api/recipients/u-1 with nothing in it was read as {}: the email and phone wiped.
    recipient = Recipient.objects.get(external_id="u-1")
    before = counts()
    error = assert_refused(send(raw, method, path, b"", content_type=content_type), 400)
    assert error["code"] == "malformed_json"
    assert counts() == before
    assert Recipient.objects.get(pk=recipient.pk).email == recipient.email


def test_what_the_rules_accept_still_goes_through(raw):
    # The other side of the tables: the documented forms are taken, and normalised as said.
    response = send(
        raw,
        "PUT",
        "/api/recipients/ana@example.com",
        {"phone": "+1 (415) 555-0100", "locale": "pt_br", "timezone": "Europe/Lisbon"},
    )
    assert response.status_code == 201, response.content
    assert response.json()["phone"] == "+14155550100"
    assert response.json()["locale"] == "pt-BR"
    # an internationalised domain is stored in the ASCII form the mail is sent to
    response = send(raw, "PUT", "/api/recipients/u-1", {"email": "Ana@Exämple.com"})
    assert response.status_code == 200, response.content
    assert response.json()["email"] == "Ana@xn--exmple-cua.com"
    rules = {"preferences": [{"channel": "email", "enabled": False}]}
    assert send(raw, "PUT", "/api/recipients/u-1/preferences", rules).status_code == 200
    assert raw.get("/api/notifications?pageSize=100000&status=queued").status_code == 200
