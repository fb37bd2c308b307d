"""Hostile input at the webhooks, which face the internet: only the configured ESP's route
exists, and whatever is refused (no or bad credentials, a body we cannot read, a wrong method
or media type) is a 4xx in the API's error shape, never a 500, and logs no ERROR (a WARNING
without the payload at most)."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from anymail import urls as anymail_urls
from django.test import Client
from django.urls import URLPattern
from django.urls.resolvers import RegexPattern
from twilio.request_validator import RequestValidator

from notifications.models import Delivery, DeliveryStatus
from preferences.models import Suppression
from tests.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db

POSTMARK = "anymail.backends.postmark.EmailBackend"
TRACKING = "/webhooks/anymail/postmark/tracking/"
SECRET = "postmark:hook-secret"
MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
VICTIM = "victim@example.com"  # must never reach the log
BOUNCE = {
    "RecordType": "Bounce",
    "Type": "HardBounce",
    "TypeCode": 1,
    "MessageID": MESSAGE_ID,
    "Email": VICTIM,
    "BouncedAt": "2026-11-25T10:00:00Z",
    "Details": "smtp;550 5.1.1 no such user",
    "Inactive": True,
}

TOKEN = "webhook-test-auth-token"
STATUS_URL = "https://notify.example.com/webhooks/twilio/status"
INBOUND_URL = "https://notify.example.com/webhooks/twilio/inbound"
FORM = "application/x-www-form-urlencoded"
SID = "SM" + "ab" * 16
NUMBER = "+15550100001"


def _client() -> Client:
    return Client(enforce_csrf_checks=True)  # as a live server: ESPs send no CSRF token


def _anymail_path(pattern: URLPattern) -> str:
    """A URL each of anymail's patterns matches, e.g. mailgun/inbound(_mime)? → mailgun/inbound/."""
    route = str(pattern.pattern)
    if isinstance(pattern.pattern, RegexPattern):
        route = re.sub(r"\([^)]*\)\?", "", route).strip("^$")
    return f"/webhooks/anymail/{route}"


ANYMAIL_PATHS = [
    pytest.param(_anymail_path(p), id=str(p.name))
    for p in anymail_urls.urlpatterns
    if isinstance(p, URLPattern)
]


@pytest.fixture(autouse=True)
def configured(settings: Any) -> None:
    settings.EMAIL_BACKEND = POSTMARK
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token", "WEBHOOK_SECRET": SECRET}
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.TWILIO_STATUS_CALLBACK_URL = STATUS_URL
    settings.TWILIO_INBOUND_URL = INBOUND_URL


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    logged = caplog.get_records("call")  # in teardown, caplog.records holds teardown's only
    errors = [r for r in logged if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    assert not any(VICTIM in r.getMessage() for r in logged)


@pytest.fixture
def sent(order_shipped: Any) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(email=VICTIM, phone=NUMBER),
        notification__event=order_shipped,
        channel="email",
        status=DeliveryStatus.SENT,
        provider="postmark",
        provider_message_id=MESSAGE_ID,
    )


def _auth(secret: str = SECRET) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def _assert_refused(response: Any, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.content
    if status is not None:
        assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return dict(error)


def _unchanged(delivery: Delivery) -> None:
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.history == []
    assert not Suppression.objects.exists()


# --- which anymail routes exist --------------------------------------------------------------


@pytest.mark.parametrize("path", ANYMAIL_PATHS)
def test_only_the_configured_esps_tracking_route_exists(path):
    response = _client().post(path, b"{}", content_type="application/json")

    if path == TRACKING:
        _assert_refused(response, 401)  # there, and asking for credentials
    else:
        assert _assert_refused(response, 404)["code"] == "not_found"


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.mail.backends.smtp.EmailBackend",
        "django.core.mail.backends.console.EmailBackend",
        "anymail.backends.amazon_ses.EmailBackend",  # boto3 is not installed: not importable
        "anymail.backends.console.EmailBackend",  # an anymail backend without webhooks
    ],
)
@pytest.mark.parametrize("path", ANYMAIL_PATHS)
def test_without_an_esp_no_anymail_route_exists(settings, backend, path):
    settings.EMAIL_BACKEND = backend

    response = _client().post(path, b"{}", content_type="application/json", **_auth())

    _assert_refused(response, 404)


def test_the_routes_follow_the_esp(settings):
    settings.EMAIL_BACKEND = "anymail.backends.mailgun.EmailBackend"
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": "signing-key"}
    mailgun = "/webhooks/anymail/mailgun/tracking/"

    assert _client().post(TRACKING, b"{}", content_type="application/json").status_code == 404
    response = _client().post(mailgun, b"{}", content_type="application/json", **_auth("x:y"))
    _assert_refused(response, 401)


def test_a_setting_the_esps_webhook_needs_is_a_503_and_a_system_check_error(settings, caplog):
    from channels.providers.email import EmailProvider

    settings.EMAIL_BACKEND = "anymail.backends.postal.EmailBackend"
    # Postal's webhook also needs POSTAL_WEBHOOK_KEY (the key it signs with).
    settings.ANYMAIL = {
        "POSTAL_API_KEY": "key",
        "POSTAL_API_URL": "https://postal.example.com",
        "WEBHOOK_SECRET": SECRET,
    }

    response = _client().post(
        "/webhooks/anymail/postal/tracking/", b"{}", content_type="application/json", **_auth()
    )

    # Our own missing setting: 503, so that the ESP retries; never a 500 with a traceback.
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "webhook_not_configured"
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()  # Django logs a 503 at ERROR, one line: a setting to fix
    assert any("POSTAL_WEBHOOK_KEY" in p for p in EmailProvider.check_configuration())


# --- Postmark, the configured ESP ------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, _auth("postmark:wrong"), {"HTTP_AUTHORIZATION": "Basic"}])
def test_postmark_without_good_credentials_is_401(sent, headers):
    response = _client().post(
        TRACKING, json.dumps(BOUNCE), content_type="application/json", **headers
    )

    assert _assert_refused(response, 401)["code"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Basic")
    _unchanged(sent)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not json"),
        pytest.param(b"\xff\xfe{}", id="not utf-8"),
        pytest.param(b"  ", id="blank"),
        pytest.param(b"[1, 2]", id="a list"),
        pytest.param(b'"Bounce"', id="a string"),
        pytest.param(json.dumps({**BOUNCE, "BouncedAt": 5}).encode(), id="time not a string"),
        pytest.param(
            json.dumps({**BOUNCE, "BouncedAt": "2026-13-45T00:00:00Z"}).encode(), id="bad time"
        ),
        pytest.param(json.dumps({**BOUNCE, "Metadata": ["x"]}).encode(), id="metadata a list"),
        pytest.param(json.dumps({**BOUNCE, "Email": {"a": 1}}).encode(), id="email an object"),
        pytest.param(
            json.dumps({**BOUNCE, "Email": "a" * 400 + VICTIM}).encode(), id="email too long"
        ),
        pytest.param(json.dumps({**BOUNCE, "Details": ["x"]}).encode(), id="details a list"),
        pytest.param(json.dumps({**BOUNCE, "MessageID": "a\u0000b"}).encode(), id="NUL in id"),
        pytest.param(json.dumps({**BOUNCE, "MessageID": ["x"]}).encode(), id="id a list"),
        pytest.param(json.dumps({"FromFull": {"Email": VICTIM}}).encode(), id="inbound payload"),
        # Deeper than json.loads' stack: was a 500 with a RecursionError traceback at ERROR.
        pytest.param(b'{"RecordType": "Bounce", "x": ' + b"[" * 50_000, id="deep"),
    ],
)
def test_postmark_malformed_body_with_good_credentials_is_400(sent, body):
    response = _client().post(TRACKING, body, content_type="application/json", **_auth())

    _assert_refused(response, 400)
    _unchanged(sent)


def test_postmark_body_over_the_upload_limit_is_413(sent, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({**BOUNCE, "Details": "x" * 2000})

    response = _client().post(TRACKING, body, content_type="application/json", **_auth())

    assert _assert_refused(response, 413)["code"] == "payload_too_large"
    _unchanged(sent)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_postmark_wrong_media_type_is_415(sent, content_type):
    response = _client().post(TRACKING, json.dumps(BOUNCE), content_type=content_type, **_auth())

    _assert_refused(response, 415)
    _unchanged(sent)


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_postmark_wrong_method_is_405(sent, method):
    response = getattr(_client(), method)(TRACKING, **_auth())

    _assert_refused(response, 405)
    assert "POST" in response["Allow"]


def test_postmark_delivery_id_that_is_not_ours_falls_back_to_the_message_id(sent):
    # "²" passes str.isdigit() and not int().
    body = json.dumps({**BOUNCE, "Metadata": {"deliveryId": "²"}})

    response = _client().post(TRACKING, body, content_type="application/json", **_auth())

    assert response.status_code == 200
    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED


def test_postmark_good_signed_payload_still_works(sent):
    response = _client().post(
        TRACKING, json.dumps(BOUNCE), content_type="application/json", **_auth()
    )

    assert response.status_code == 200
    sent.refresh_from_db()
    assert sent.status == DeliveryStatus.FAILED
    assert list(Suppression.objects.values_list("address", "reason")) == [(VICTIM, "hard_bounce")]


# --- Twilio --------------------------------------------------------------------------------


@pytest.fixture
def sent_sms(order_shipped: Any) -> Delivery:
    return DeliveryFactory(
        notification__recipient=RecipientFactory(phone=NUMBER),
        notification__event=order_shipped,
        channel="sms",
        status=DeliveryStatus.SENT,
        provider="twilio",
        provider_message_id=SID,
    )


def _twilio(
    path: str, params: dict[str, str], *, query: str = "", sign: bool = True, **headers: Any
) -> Any:
    url = (STATUS_URL if path == "status" else INBOUND_URL) + (f"?{query}" if query else "")
    if sign:
        headers["HTTP_X_TWILIO_SIGNATURE"] = RequestValidator(TOKEN).compute_signature(url, params)
    target = f"/webhooks/twilio/{path}" + (f"?{query}" if query else "")
    headers.setdefault("content_type", FORM)
    return _client().post(target, urlencode(params), **headers)


def _status(**params: str) -> dict[str, str]:
    return {
        "MessageSid": SID,
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
        "To": NUMBER,
        **params,
    }


@pytest.mark.parametrize("path", ["status", "inbound"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"HTTP_X_TWILIO_SIGNATURE": "bm90IGEgc2lnbmF0dXJl"}, {"HTTP_X_TWILIO_SIGNATURE": "é"}],
)
def test_twilio_without_a_good_signature_is_403_json(sent_sms, path, headers):
    params = _status() if path == "status" else {"From": NUMBER, "Body": "STOP"}

    response = _twilio(path, params, sign=False, **headers)

    assert _assert_refused(response, 403)["code"] == "forbidden"
    sent_sms.refresh_from_db()
    assert sent_sms.history == []
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"MessageStatus": "delivered"}, id="no MessageSid"),
        pytest.param({"MessageSid": SID}, id="no MessageStatus"),
        pytest.param(_status(MessageSid="SM-not-a-sid"), id="not a sid"),
        pytest.param(_status(To="+1555\x000100001"), id="NUL in To"),
        pytest.param(_status(To="+1" + "5" * 400), id="To too long"),
        pytest.param(_status(MessageStatus="deliv\ufffdered"), id="not utf-8"),
        pytest.param(_status(ErrorCode="3\x00"), id="NUL in ErrorCode"),
    ],
)
def test_twilio_status_malformed_with_a_good_signature_is_400(sent_sms, params):
    response = _twilio("status", params)

    _assert_refused(response, 400)
    sent_sms.refresh_from_db()
    assert sent_sms.history == []
    assert not Suppression.objects.exists()


def test_twilio_raw_non_utf8_bytes_are_400(sent_sms):
    # What Django decodes "%FF" to (U+FFFD) is what a sender could have signed.
    params = _status(MessageStatus="deliv\ufffdered")
    signature = RequestValidator(TOKEN).compute_signature(STATUS_URL, params)
    body = urlencode(_status(MessageStatus="delivXered")).replace("delivXered", "deliv%FFered")

    response = _client().post(
        "/webhooks/twilio/status", body, content_type=FORM, HTTP_X_TWILIO_SIGNATURE=signature
    )

    _assert_refused(response, 400)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"Body": "STOP"}, id="no From"),
        pytest.param({"From": "+1555\x000100001", "Body": "STOP"}, id="NUL in From"),
        pytest.param({"From": "+1" + "5" * 400, "Body": "STOP"}, id="From too long"),
    ],
)
def test_twilio_inbound_malformed_with_a_good_signature_is_400(params):
    _assert_refused(_twilio("inbound", params), 400)
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json.dumps(_status())),
        ("multipart/form-data; boundary=zzz", "--zzz\r\nbroken"),
        ("multipart/form-data", "no boundary"),
        ("text/plain", urlencode(_status())),
    ],
)
@pytest.mark.parametrize("path", ["status", "inbound"])
def test_twilio_body_not_form_encoded_is_415(sent_sms, path, content_type, body):
    response = _client().post(
        f"/webhooks/twilio/{path}", body, content_type=content_type, HTTP_X_TWILIO_SIGNATURE="x"
    )

    _assert_refused(response, 415)


def test_twilio_body_over_the_upload_limit_is_413(sent_sms, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = _twilio("status", _status(Body="x" * 2000))

    assert _assert_refused(response, 413)["code"] == "payload_too_large"


def test_twilio_too_many_fields_is_400(sent_sms, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10

    response = _twilio("status", _status(**{f"F{i}": "x" for i in range(20)}))

    _assert_refused(response, 400)


@pytest.mark.parametrize("path", ["status", "inbound"])
@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_twilio_wrong_method_is_405_json(path, method):
    response = getattr(_client(), method)(f"/webhooks/twilio/{path}")

    _assert_refused(response, 405)
    assert response["Allow"] == "POST"


@pytest.mark.parametrize("delivery_id", ["%C2%B2", "9" * 40])  # %C2%B2: "²"
def test_twilio_delivery_id_that_is_not_ours_falls_back_to_the_message_sid(sent_sms, delivery_id):
    response = _twilio(
        "status", _status(MessageStatus="delivered"), query=f"deliveryId={delivery_id}"
    )

    assert response.status_code == 200
    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.DELIVERED


def test_twilio_unknown_message_sid_is_still_200(sent_sms):
    response = _twilio("status", _status(MessageSid="SM" + "ee" * 16, MessageStatus="delivered"))

    assert response.status_code == 200
    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.SENT


def test_twilio_good_signed_payloads_still_work(sent_sms):
    assert _twilio("status", _status()).status_code == 200
    assert _twilio("inbound", {"From": "+15550100002", "Body": "STOP"}).status_code == 200

    sent_sms.refresh_from_db()
    assert sent_sms.status == DeliveryStatus.FAILED
    assert sorted(Suppression.objects.values_list("address", "reason")) == [
        (NUMBER, "invalid"),
        ("+15550100002", "sms_stop"),
    ]
