"""The recipient's side in a real browser (Playwright driving Debian's Chromium, headless):
the inbox web component shows a notification sent through the API and a real worker as it
arrives and marking it read clears the badge; the preference centre turns a channel off and
the next notification skips it; the unsubscribe page's button opts out. The site is served
as `make run` serves it: nginx in front of gunicorn and the stream's uvicorn.

`make test` installs Chromium (apt-get install chromium); without it these tests fail, they
never skip. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from devtools import proxy
from notifications.models import Delivery, InboxMessage
from preferences import access
from preferences.models import Preference, Recipient
from tests.factories import RecipientFactory
from tests.proxied import free_port
from tests.workers import wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DEADLINE_MS = 20_000


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: `make test` installs it (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def site(django_db_setup, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    env = worker_env(NOTIFY_DEMO_PAGE="1", NOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}")
    # As make run: the web component is a static file, served from STATIC_ROOT.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
                   cwd=ROOT, env=env, check=True)  # fmt: skip
    with proxy.served(env, tmp_path_factory.mktemp("site"), port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop on this thread, so Django would take every
    # query of these tests for one made from async code; they are not (its documented way out).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
            try:
                yield launched
            finally:
                launched.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    try:
        yield opened
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


def notify(api_client, user_id: str, order: str) -> str:
    response = api_client.post(
        "/api/notify",
        {"userId": user_id, "event": "order_shipped", "channels": ["inapp"],
         "data": {"orderId": order}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def test_the_web_component_shows_a_live_notification_and_mark_read_clears_the_badge(
    site, page, api_client, order_shipped, workers
):
    RecipientFactory(external_id="demo-user")
    page.goto(f"{site}/demo/inbox")
    inbox = page.locator("notify-inbox")
    expect(inbox).to_have_attribute("data-live", "true", timeout=DEADLINE_MS)
    badge = inbox.locator(".badge")
    expect(badge).to_be_hidden()

    notify(api_client, "demo-user", "77")

    expect(badge).to_have_text("1", timeout=DEADLINE_MS)
    bell = inbox.locator(".bell")
    bell.click()
    item = inbox.get_by_role("button", name="Unread: Order 77 shipped")
    expect(item).to_be_visible()
    item.click()
    expect(badge).to_be_hidden(timeout=DEADLINE_MS)
    wait_for(  # the component's POST /api/inbox/{id}/read, made as the badge cleared
        lambda: InboxMessage.objects.get(recipient__external_id="demo-user").read_at,
        what="the message read in the database",
    )
    expect(bell).to_have_attribute("aria-label", "Notifications")

    # The settings link opens the recipient's preference centre.
    inbox.get_by_role("button", name="Notification settings").click()
    expect(page.get_by_role("heading", name="Your notification settings")).to_be_visible()


def test_the_preference_centre_turns_a_channel_off_for_the_next_notification(
    site, page, api_client, order_shipped, workers
):
    ana = RecipientFactory(external_id="ana")
    url = access.preference_centre_url(recipient_id=ana.pk, generation=ana.token_generation)
    page.goto(site + urlsplit(url).path)

    in_app = page.get_by_label("In the app for orders")
    expect(in_app).to_be_checked()
    in_app.uncheck()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_label("In the app for orders")).not_to_be_checked()

    notification_id = notify(api_client, "ana", "5")
    delivery = Delivery.objects.get(notification_id=notification_id, channel="inapp")
    assert (delivery.status, delivery.reason) == ("skipped", "opted_out")


def test_the_unsubscribe_page_button_opts_out_of_the_category_on_email(site, page, order_shipped):
    bo = RecipientFactory(external_id="bo")
    url = access.unsubscribe_url(recipient_id=bo.pk, category="orders", channel="email")

    page.goto(site + urlsplit(url).path)
    page.get_by_role("button", name="Unsubscribe from orders e-mails").click()

    expect(page.get_by_role("heading")).to_have_text("You are unsubscribed")
    (rule,) = Preference.objects.filter(recipient=Recipient.objects.get(pk=bo.pk))
    assert (rule.channel, rule.enabled) == ("email", False)
