"""Properties of POST /api/notify over generated bodies (hypothesis).

Whatever JSON arrives, the answer is either a 4xx in the JSON error format that wrote nothing, or
a 202/200 whose notification and deliveries are in the database exactly as the answer says.
Never a 5xx, never a partial write. Examples are derandomized: CI runs the same ones each time.

The examples of one test share its database transaction, so later ones meet what earlier ones
wrote (a reused idempotency key is replayed or refused): that is intended.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from channels.base import Channel
from notifications.models import Delivery, Notification
from preferences.models import Event
from tests.factories import DeviceFactory, PreferenceFactory, RecipientFactory

pytestmark = pytest.mark.django_db

PROPERTY_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=150,
    # The fixtures (API key, catalog, recipients) are meant to be shared by the examples.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = ("userId", "event", "channels", "data", "idempotencyKey", "priority")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them, JSON does not allow them
    | st.text()
    # JSON can carry these, PostgreSQL's text and jsonb cannot; st.text() never draws surrogates.
    | st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff"])
)
any_json = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(FIELDS), children, max_size=5)
    ),
    max_leaves=20,
)


storable_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
storable_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Template context: the recipient's values are text in every channel, never template code.
    | storable_text
    | st.sampled_from(["{{ settings.SECRET_KEY }}", "<script>x</script>"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(storable_text, children, max_size=4)
    ),
    max_leaves=10,
)


def valid_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Bodies of valid values only: known recipients and events, real channels."""
    return st.fixed_dictionaries(
        {
            "userId": st.sampled_from(["u-42", "u-43"]),
            "event": st.sampled_from(["order_shipped", "login_code"]),
        },
        optional={
            "channels": st.lists(
                st.sampled_from(Channel.values), min_size=1, max_size=4, unique=True
            ),
            "data": st.dictionaries(storable_text, storable_json, max_size=4)
            | st.dictionaries(st.text(max_size=10) | st.just("\x00"), any_json, max_size=4),
            # A few keys mostly, so that examples reuse them: replays and conflicts.
            "idempotencyKey": st.sampled_from(["k1", "k2", "k3"]) | storable_text.filter(bool),
            "priority": st.sampled_from(["transactional", "bulk"]),
        },
    )


# Per field, values that are almost right: unknown, blank, too long, of the wrong case.
NEAR_MISSES: dict[str, st.SearchStrategy[Any]] = {
    "userId": st.sampled_from(["nobody", "", "U-42", "u-42 ", "x" * 256, "u-\x00"]),
    "event": st.sampled_from(["ORDER_SHIPPED", "nope", "", "e" * 129]),
    "channels": st.sampled_from([[], ["fax"], ["email", "email"], ["email", ""], "email"]),
    "data": st.sampled_from([[], "x", {"deep": [[[[[[[[]]]]]]]]}, {"nul": "\x00"}]),
    "idempotencyKey": st.sampled_from(["", "k" * 256, 7]),
    "priority": st.sampled_from(["urgent", "", None]),
}


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A valid body, then maybe broken: a field dropped, retyped, nearly right, or added."""
    body = draw(bodies)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        mutation = draw(st.sampled_from(["drop", "retype", "near_miss", "add"]))
        field = draw(st.sampled_from(FIELDS))
        if mutation == "drop":
            body.pop(field, None)
        elif mutation == "retype":
            body[field] = draw(any_json)
        elif mutation == "near_miss":
            body[field] = draw(NEAR_MISSES[field])
        else:
            body[draw(st.text(min_size=1, max_size=10))] = draw(any_json)
    return body


header_keys = (
    st.none()
    | st.sampled_from(["k1", "k2"])
    | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
)


@pytest.fixture
def catalog(order_shipped: Event, security_code: Event) -> None:
    """Two recipients: one reachable on every channel, one who opted out of email."""
    ana = RecipientFactory(external_id="u-42")
    DeviceFactory(recipient=ana)
    bob = RecipientFactory(external_id="u-43", phone=None)
    PreferenceFactory(recipient=bob, channel=Channel.EMAIL)


def counts() -> tuple[int, int]:
    return Notification.objects.count(), Delivery.objects.count()


def post(client: APIClient, body: Any, header_key: str | None) -> Any:
    headers = {} if header_key is None else {"HTTP_IDEMPOTENCY_KEY": header_key}
    return client.post(
        "/api/notify", data=json.dumps(body), content_type="application/json", **headers
    )


def check_answer(response: Any, before: tuple[int, int]) -> None:
    """The properties themselves, for one request and its answer."""
    # Shown by --hypothesis-show-statistics: how many examples got past validation.
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    answer = response.json()
    if response.status_code >= 400:
        assert set(answer) == {"error"}, answer
        error = answer["error"]
        assert set(error) <= {"code", "message", "fields"}
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error.get("fields", {}), dict)
        assert counts() == before, "a refused request wrote rows"
        return

    assert response.status_code in (200, 202), response.status_code
    notification = Notification.objects.get(pk=answer["id"])
    stored = {
        delivery.channel: delivery
        for delivery in Delivery.objects.filter(notification=notification)
    }
    answered = {delivery["channel"]: delivery for delivery in answer["deliveries"]}
    assert len(answered) == len(answer["deliveries"]), "a channel answered twice"
    assert set(answered) == set(stored)
    if response.status_code == 202:
        assert counts() == (before[0] + 1, before[1] + len(stored))
        # Fresh, so the statuses are those written at accept (no worker runs here).
        for channel, delivery in answered.items():
            assert delivery["status"] == stored[channel].status
            assert delivery.get("reason", "") == stored[channel].reason
    else:
        assert response["Idempotent-Replayed"] == "true"
        assert counts() == before, "a replay wrote rows"


@PROPERTY_SETTINGS
@given(body=any_json, header_key=header_keys)
def test_any_json_body_is_refused_cleanly_or_accepted_consistently(
    api_client: APIClient, catalog: None, body: Any, header_key: str | None
) -> None:
    before = counts()
    check_answer(post(api_client, body, header_key), before)


@PROPERTY_SETTINGS
@given(body=mutated(valid_bodies()), header_key=header_keys)
def test_nearly_valid_bodies_are_refused_cleanly_or_accepted_consistently(
    api_client: APIClient, catalog: None, body: Any, header_key: str | None
) -> None:
    before = counts()
    check_answer(post(api_client, body, header_key), before)


@PROPERTY_SETTINGS
@given(body=valid_bodies(), header_key=header_keys)
def test_the_same_request_twice_with_a_key_is_one_notification(
    api_client: APIClient, catalog: None, body: dict[str, Any], header_key: str | None
) -> None:
    before = counts()
    first = post(api_client, body, header_key)
    check_answer(first, before)
    after_first = counts()
    second = post(api_client, body, header_key)
    check_answer(second, after_first)
    if first.status_code in (200, 202) and (body.get("idempotencyKey") or header_key):
        assert second.status_code == 200
        assert second.json() == first.json()
