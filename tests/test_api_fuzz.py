"""Schemathesis against our own OpenAPI schema: every operation, valid and schema-violating
requests, in-process through the WSGI app on the real PostgreSQL test database.

Each request must get an answer the schema documents (status code, content type, body), and
never a 5xx. The examples are derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

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
    response_schema_conformance,
    status_code_conformance,
)

from channels.base import Channel
from config.wsgi import application
from preferences.models import Event, Topic, TopicSubscription
from tests.factories import (
    DeliveryFactory,
    DeviceFactory,
    NotificationFactory,
    PreferenceFactory,
    RecipientFactory,
)

pytestmark = pytest.mark.django_db

# Per operation, valid and invalid together: 22 operations, 2,200 requests, about 30 s here.
EXAMPLES_PER_OPERATION = 100

# Schemathesis' default answers to a schema-violating request.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # A request the schema forbids must be refused (4xx): the schema is not laxer than the API.
    negative_data_rejection,
]


NOTIFICATION_ID = "0b6f2f9e-5c1a-4d8e-9a51-3f2b7c9d1e42"
DEVICE_ID = 900_000_001
SEEDED_PATH_PARAMETERS: dict[str, object] = {
    "user_id": "u-42",
    "notification_id": NOTIFICATION_ID,
    "device_id": DEVICE_ID,
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
def seeded(order_shipped: Event, security_code: Event) -> None:
    """A little of everything, so that valid requests reach past the lookups."""
    recipient = RecipientFactory(external_id="u-42")
    DeviceFactory(recipient=recipient, id=DEVICE_ID)
    PreferenceFactory(recipient=recipient, channel=Channel.SMS)
    notification = NotificationFactory(id=NOTIFICATION_ID, recipient=recipient, event=order_shipped)
    DeliveryFactory(notification=notification)
    topic = Topic.objects.create(key="product-news", name="Product news")
    TopicSubscription.objects.create(topic=topic, recipient=recipient)


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


@schema.parametrize()
@schema.given(data=st.data())
@settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=EXAMPLES_PER_OPERATION,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case,
    data: st.DataObject,
    seeded: None,
    api_key: tuple[APIKey, str],
    connection_kept_open: None,
) -> None:
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        aim_at_seeded_rows(case, data)
    case.call_and_validate(headers={"Authorization": f"Api-Key {api_key[1]}"}, checks=CHECKS)


def aim_at_seeded_rows(case: schemathesis.Case, data: st.DataObject) -> None:
    """Random ids and keys only ever find nothing (404, unknown user or event); about half the
    valid requests name the seeded rows instead, so that they reach the code behind the lookups.
    """
    for name in case.path_parameters or {}:
        if name in SEEDED_PATH_PARAMETERS and data.draw(st.booleans(), label=name):
            case.path_parameters[name] = SEEDED_PATH_PARAMETERS[name]
    pending = [case.body]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in SEEDED_BODY_VALUES and data.draw(st.booleans(), label=key):
                    item[key] = copy.deepcopy(SEEDED_BODY_VALUES[key])
                else:
                    pending.append(value)
