"""Schemathesis against our own OpenAPI schema: every operation, valid and schema-violating
requests, in-process through the WSGI app on the real PostgreSQL test database.

Each request must get an answer the schema documents (status code, content type, body), and
never a 5xx; and the schema and the service must agree both ways: a request the schema forbids
is refused (negative data rejection), and one it allows is not refused as malformed (positive
data acceptance: no 400; a 404 for ids that name nothing, a 409 or a 422 for a well-formed
reference to something not in the catalog are fine). The examples are derandomized, so CI runs
the same cases every time.

What the schema cannot state is listed in ``make_schema_valid_case_meaningful`` below, each
with its reason, and tested in tests/test_hostile_input.py instead.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework_api_key.models import APIKey
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import ChecksConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from channels.base import Channel
from config.wsgi import application
from notifications.api.pagination import signed_cursor
from preferences import access
from preferences.models import Event, Recipient, Topic, TopicSubscription
from tests.factories import (
    DeliveryFactory,
    DeviceFactory,
    InboxMessageFactory,
    NotificationFactory,
    PreferenceFactory,
    RecipientFactory,
)

pytestmark = pytest.mark.django_db

# Per operation, valid and invalid together, plus the coverage phase's boundary cases: 32
# operations, about 4,000 requests, about a minute here.
EXAMPLES_PER_OPERATION = 60

# A schema-valid request may name nothing (404), a key used with another body (409), or an event
# not in the catalog (422); a 400 says the schema is laxer than the service.
ACCEPTANCES = ["2xx", "404", "409", "413", "422"]

# Schemathesis' default answers to a schema-violating request.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # A request the schema forbids must be refused (4xx): the schema is not laxer than the API.
    negative_data_rejection,
    # A request the schema allows must not be refused as malformed: the schema is not stricter.
    positive_data_acceptance,
]


NOTIFICATION_ID = "0b6f2f9e-5c1a-4d8e-9a51-3f2b7c9d1e42"
DEVICE_ID = 900_000_001
INBOX_MESSAGE_ID = 900_000_002
SEEDED_PATH_PARAMETERS: dict[str, object] = {
    "user_id": "u-42",
    "notification_id": NOTIFICATION_ID,
    "device_id": DEVICE_ID,
    "message_id": INBOX_MESSAGE_ID,
    "key": "product-news",
}

SEEDED_BODY_VALUES: dict[str, object] = {
    "userId": "u-42",
    "userIds": ["u-42"],
    "event": "order_shipped",
    "audience": {"topic": "product-news"},
    "topic": "product-news",
    "category": "orders",
}


@pytest.fixture
def connection_kept_open() -> Iterator[None]:
    """What Django's test client does: the WSGI handler would close the database connection
    after each request, and with it the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def no_inbox_rate_limit(settings: Any) -> None:
    settings.NOTIFY_INBOX_RATE_LIMIT = ""  # the fuzzer calls as one recipient, fast


@pytest.fixture
def seeded(order_shipped: Event, security_code: Event) -> None:
    """A little of everything, so that valid requests reach past the lookups."""
    recipient = RecipientFactory(external_id="u-42")
    DeviceFactory(recipient=recipient, id=DEVICE_ID)
    PreferenceFactory(recipient=recipient, channel=Channel.SMS)
    notification = NotificationFactory(id=NOTIFICATION_ID, recipient=recipient, event=order_shipped)
    DeliveryFactory(notification=notification)
    topic = Topic.objects.create(key="product-news", name="Product news")
    TopicSubscription.objects.create(topic=topic, recipient=recipient)
    InboxMessageFactory(id=INBOX_MESSAGE_ID, recipient=recipient)


# Loaded when the module is collected (pytest-django has set Django up by then); the schema
# view reads no table. schemathesis.pytest.from_fixture would defer this, but it sets a Node
# attribute that pytest 9 no longer has.
schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
schema.config.generation.update(
    modes=list(GenerationMode),
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    database="none",
    # Requests without the key, or with a random one, are the accept-errors tests' business;
    # here every request carries the fixture's key (below) and the examples go to the input.
    with_security_parameters=False,
)
# The config file's [checks.negative_data_rejection], plus 413: an oversized body is refused too.
schema.config.checks.negative_data_rejection = ChecksConfig.from_dict(
    {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "413"]}}
).negative_data_rejection
schema.config.checks.positive_data_acceptance = ChecksConfig.from_dict(
    {"positive_data_acceptance": {"expected-statuses": ACCEPTANCES}}
).positive_data_acceptance

# "format: phone" (notifications.api.fields.PhoneField): validity is phonenumbers' metadata,
# which no pattern holds; valid numbers, as a client would send them.
VALID_PHONES = ["+14155550100", "+351912345678", "+44 20 7946 0958", "+1 (415) 555-0100"]
schemathesis.openapi.format("phone", st.sampled_from(VALID_PHONES))

# Cursors as encode_cursor writes them: offset, direction; positions are per list.
VALID_CURSORS = [signed_cursor(tokens) for tokens in ("o=1", "o=1&r=1", "o=2")]


# Which valid cases are aimed at the seeded rows: a fixed sequence, not a Hypothesis draw, since
# schemathesis runs its coverage phase (boundary values: one past maxLength, 0 for a boolean, an
# empty list...) only for tests without @schema.given.
CHOICES = random.Random(11)


@schema.parametrize()
@settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=EXAMPLES_PER_OPERATION,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case,
    seeded: None,
    api_key: tuple[APIKey, str],
    connection_kept_open: None,
    no_inbox_rate_limit: None,
) -> None:
    checks = CHECKS
    if is_schema_valid(case):
        aim_at_seeded_rows(case)
        make_schema_valid_case_meaningful(case)
    elif case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        # The coverage phase labels some cases positive while one of their components is not
        # (a near-boundary header with the body 0): nothing to accept there.
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.call_and_validate(headers={"Authorization": credentials(case, api_key)}, checks=checks)


def credentials(case: schemathesis.Case, api_key: tuple[APIKey, str]) -> str:
    """The inbox API takes the seeded recipient's token; everything else the API key."""
    if not case.path.startswith("/api/inbox"):
        return f"Api-Key {api_key[1]}"
    recipient = Recipient.objects.get(external_id="u-42")
    token, _ = access.token_mint(
        recipient_id=recipient.pk, generation=recipient.token_generation, ttl_seconds=600
    )
    return f"Bearer {token}"


def is_schema_valid(case: schemathesis.Case) -> bool:
    meta = case.meta
    return (
        meta is not None
        and meta.generation.mode == GenerationMode.POSITIVE
        and all(c.mode == GenerationMode.POSITIVE for c in meta.components.values())
    )


def aim_at_seeded_rows(case: schemathesis.Case) -> None:
    """Random ids and keys only ever find nothing (404, unknown user or event); about half the
    valid requests name the seeded rows instead, so that they reach the code behind the lookups.
    """
    for name in case.path_parameters or {}:
        if name in SEEDED_PATH_PARAMETERS and CHOICES.random() < 0.5:
            case.path_parameters[name] = SEEDED_PATH_PARAMETERS[name]
    pending = [case.body]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in SEEDED_BODY_VALUES and CHOICES.random() < 0.5:
                    item[key] = copy.deepcopy(SEEDED_BODY_VALUES[key])
                else:
                    pending.append(value)


def make_schema_valid_case_meaningful(case: schemathesis.Case) -> None:
    """The rules a JSON schema cannot state, applied to a schema-valid case, so that a 400 to
    what is left means the schema is laxer than the service (each rule tested elsewhere):

    - a cursor is opaque: only the server mints valid ones (the schema gives its alphabet);
    - a category is a row of the catalog (like an event, but refused with 400 by DRF's
      related field): schema-valid rules name a seeded one or none;
    - two preference rules may not name the same (category, channel); omitted and null are
      both "all", which ``uniqueItems`` cannot see;
    - a phone number must be one (``format: phone``; the coverage phase only reads its pattern);
    - a suppression's address is an email address or a phone number, after its channel;
    - the Idempotency-Key header and ``idempotencyKey`` must be equal when both are given;
    - ``data`` is free-form JSON, but PostgreSQL stores no NUL character in it.
    """
    if case.query and "cursor" in case.query:
        case.query["cursor"] = CHOICES.choice(VALID_CURSORS)
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if isinstance(body.get("preferences"), list):
        rules, seen = [], set()
        for rule in body["preferences"]:
            if isinstance(rule, dict) and rule.get("category") is not None:
                rule["category"] = "orders"
            key = (rule.get("category"), rule.get("channel"))
            if key not in seen:
                seen.add(key)
                rules.append(rule)
        body["preferences"] = rules
    if isinstance(body.get("phone"), str) and body["phone"]:
        body["phone"] = CHOICES.choice(VALID_PHONES)  # the coverage phase ignores format: phone
    if body.get("channel") in ("email", "sms") and "address" in body:
        body["address"] = "gone@example.com" if body["channel"] == "email" else VALID_PHONES[0]
    if case.headers and "Idempotency-Key" in case.headers and "idempotencyKey" in body:
        body["idempotencyKey"] = case.headers["Idempotency-Key"]  # a header is ASCII, a body not
    if "data" in body:
        body["data"] = without_nul(body["data"])


def without_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value
