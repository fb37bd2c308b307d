"""Requests Django calls suspicious (a forged Host, too many fields) are the client's fault:
a 4xx JSON answer and one WARNING line without a traceback, never an ERROR in the log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What the configured console handler writes (its filters included)."""
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    previous = handler.setStream(out)
    try:
        yield out
    finally:
        handler.setStream(previous)


def test_a_forged_host_header_is_a_json_400_and_one_warning_line(client, console):
    response = client.get("/healthz", HTTP_HOST="attacker.example")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"]
    written = console.getvalue()
    assert "WARNING django.security.DisallowedHost" in written
    assert "ERROR" not in written
    assert "Traceback" not in written


def test_too_many_form_fields_leave_no_error_in_the_log(client, console, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    body = "&".join(f"f{i}=x" for i in range(50))

    response = client.post("/admin/login/", body, content_type="application/x-www-form-urlencoded")

    assert 400 <= response.status_code < 500
    assert "ERROR" not in console.getvalue()
    assert "Traceback" not in console.getvalue()
