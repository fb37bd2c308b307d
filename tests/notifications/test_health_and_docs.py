from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from config.celery import app
from tests.workers import dead_broker_url

pytestmark = pytest.mark.django_db


def test_healthz_checks_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "providers": {}}


def test_healthz_is_503_when_the_broker_is_unreachable(client):
    original = app.conf.broker_write_url
    app.conf.broker_write_url = dead_broker_url()  # nothing listens on the discard port
    try:
        response = client.get("/healthz")
    finally:
        app.conf.broker_write_url = original
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "database": "ok",
        "broker": "unavailable",
        "providers": {},
    }


def test_openapi_schema_and_docs_are_served_without_a_key(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/notify" in paths
    assert "/api/recipients/{user_id}/preferences" in paths
    assert "ApiKeyAuth" in schema.json()["components"]["securitySchemes"]
    assert client.get("/api/docs/").status_code == 200


def test_the_docs_page_loads_nothing_from_another_origin(client):
    # Swagger UI came from cdn.jsdelivr.net "@latest": a third-party, unpinned script on the
    # admin's origin, and no docs offline. Every src/href must be a path on this service, and
    # every one a static file we ship.
    page = client.get("/api/docs/").content.decode()
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", page.replace("//# ", "")), page
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    assert urls, page
    for url in urls:
        assert url.startswith("/static/"), url
        assert finders.find(url.removeprefix("/static/")), url


def test_unknown_api_path_is_a_json_404(api_client):
    response = api_client.get("/api/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_healthz_answers_other_methods_with_a_json_405(method):
    # With CSRF enforced as for a real client: it used to be CSRF's HTML 403 page.
    response = getattr(Client(enforce_csrf_checks=True), method)("/healthz")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_healthz_answers_head(client):
    assert client.head("/healthz").status_code == 200
