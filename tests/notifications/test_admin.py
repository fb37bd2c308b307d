from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from channels.lanes import EMAIL, SMS
from notifications.models import (
    Delivery,
    DeliveryStatus,
    FailedDelivery,
    InboxMessage,
    Notification,
    Template,
)
from tests.factories import (
    DeliveryFactory,
    NotificationFactory,
    RecipientFactory,
    TemplateFactory,
)

pytestmark = pytest.mark.django_db


def _dead_letter(delivery: Delivery, **fields) -> FailedDelivery:
    fields.setdefault("error_class", "channels.base.PermanentDeliveryError")
    fields.setdefault("error_message", "Twilio API 400 code 21211: invalid 'To' number")
    return FailedDelivery.objects.create(delivery=delivery, attempts=1, **fields)


def _result_pks(response) -> set:
    assert response.status_code == 200
    return {obj.pk for obj in response.context["cl"].result_list}


# --- templates ---------------------------------------------------------------------------


def _template_post(template: Template, **overrides) -> dict:
    data = {
        "event": template.event_id,
        "channel": template.channel,
        "locale": template.locale,
        "subject": template.subject,
        "body": template.body,
        "html_body": template.html_body,
        "url": template.url,
    }
    data.update(overrides)
    return data


def test_template_changelist_filters_and_searches(admin_client, order_shipped):
    url = reverse("admin:notifications_template_changelist")
    email = Template.objects.get(event=order_shipped, channel="email")
    french = TemplateFactory(event=order_shipped, channel="email", locale="fr", body="Bonjour")

    response = admin_client.get(url)
    assert _result_pks(response) == set(Template.objects.values_list("pk", flat=True))
    assert b"order_shipped" in response.content

    assert _result_pks(admin_client.get(url, {"channel__exact": "email"})) == {email.pk, french.pk}
    assert _result_pks(admin_client.get(url, {"locale": "fr"})) == {french.pk}
    assert len(_result_pks(admin_client.get(url, {"event__id__exact": order_shipped.pk}))) == 5
    assert len(_result_pks(admin_client.get(url, {"q": "order_shipped"}))) == 5


def test_template_form_rejects_a_syntax_error(admin_client, order_shipped):
    template = Template.objects.get(event=order_shipped, channel="email")

    response = admin_client.post(
        reverse("admin:notifications_template_change", args=[template.pk]),
        _template_post(template, body="{% if paid %}Thanks"),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "body" in errors
    assert "syntax error" in errors["body"][0]
    template.refresh_from_db()
    assert template.body == "Your order {{ orderId }} is on its way."
    assert template.version == 1


def test_template_form_checks_every_source_field(admin_client, order_shipped):
    template = Template.objects.get(event=order_shipped, channel="email")

    response = admin_client.post(
        reverse("admin:notifications_template_change", args=[template.pk]),
        _template_post(template, subject="{{ orderId|nosuchfilter }}", html_body="{% if %}"),
    )

    errors = response.context["adminform"].form.errors
    assert set(errors) == {"subject", "html_body"}


def test_template_edit_bumps_version(admin_client, order_shipped):
    template = Template.objects.get(event=order_shipped, channel="email")
    url = reverse("admin:notifications_template_change", args=[template.pk])

    response = admin_client.post(url, _template_post(template, body="Shipped: {{ orderId }}"))
    assert response.status_code == 302
    template.refresh_from_db()
    assert (template.body, template.version) == ("Shipped: {{ orderId }}", 2)

    admin_client.post(url, _template_post(template, subject="Your order shipped"))
    template.refresh_from_db()
    assert template.version == 3


def test_template_add_starts_at_version_one(admin_client, order_shipped):
    Template.objects.filter(event=order_shipped, channel="sms").delete()

    response = admin_client.post(
        reverse("admin:notifications_template_add"),
        {"event": order_shipped.pk, "channel": "sms", "locale": "", "body": "Order {{ id }}"},
    )

    assert response.status_code == 302
    assert Template.objects.get(event=order_shipped, channel="sms").version == 1


# --- the notification log ----------------------------------------------------------------


@pytest.fixture
def log(order_shipped):
    """Three notifications: one both-channels queued, one email failed, one in-app sent."""
    alice = RecipientFactory(external_id="alice")
    queued = NotificationFactory(event=order_shipped, recipient=alice, idempotency_key="order-1")
    DeliveryFactory(notification=queued, channel="email", status=DeliveryStatus.QUEUED)
    DeliveryFactory(notification=queued, channel="inapp", status=DeliveryStatus.QUEUED)
    failed = NotificationFactory(event=order_shipped, recipient__external_id="bob")
    failed_email = DeliveryFactory(
        notification=failed, channel="email", status=DeliveryStatus.FAILED, reason="21211"
    )
    sent = NotificationFactory(event=order_shipped, recipient=alice)
    DeliveryFactory(
        notification=sent,
        channel="inapp",
        status=DeliveryStatus.SENT,
        provider="inapp",
        provider_message_id="m-42",
    )
    return {"queued": queued, "failed": failed, "failed_email": failed_email, "sent": sent}


def test_notification_changelist_lists_and_searches(admin_client, log):
    url = reverse("admin:notifications_notification_changelist")
    every = {log["queued"].pk, log["failed"].pk, log["sent"].pk}

    response = admin_client.get(url)
    assert _result_pks(response) == every
    assert b"order-1" in response.content

    assert _result_pks(admin_client.get(url, {"q": "alice"})) == {log["queued"].pk, log["sent"].pk}
    assert _result_pks(admin_client.get(url, {"q": "order-1"})) == {log["queued"].pk}
    assert _result_pks(admin_client.get(url, {"event__id__exact": log["sent"].event_id})) == every


def test_notification_search_reaches_the_recipient_after_the_user_id_changed(admin_client, log):
    Notification.objects.filter(pk=log["failed"].pk).update(external_user_id="")

    response = admin_client.get(
        reverse("admin:notifications_notification_changelist"), {"q": "bob"}
    )

    assert _result_pks(response) == {log["failed"].pk}


def test_notification_delivery_filters_list_each_notification_once(admin_client, log):
    url = reverse("admin:notifications_notification_changelist")

    queued = admin_client.get(url, {"delivery_status": "queued"})
    # Two queued deliveries, one notification: a join would list it twice.
    assert [obj.pk for obj in queued.context["cl"].result_list] == [log["queued"].pk]
    assert _result_pks(admin_client.get(url, {"delivery_status": "failed"})) == {log["failed"].pk}
    assert _result_pks(admin_client.get(url, {"delivery_channel": "inapp"})) == {
        log["queued"].pk,
        log["sent"].pk,
    }
    both = admin_client.get(url, {"delivery_status": "sent", "delivery_channel": "inapp"})
    assert _result_pks(both) == {log["sent"].pk}
    assert _result_pks(admin_client.get(url, {"delivery_channel": "sms"})) == set()


def test_notification_is_a_read_only_log(admin_client, log):
    notification = log["queued"]

    assert admin_client.get(reverse("admin:notifications_notification_add")).status_code == 403
    response = admin_client.get(
        reverse("admin:notifications_notification_change", args=[notification.pk])
    )
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    (inline,) = response.context["inline_admin_formsets"]
    assert inline.formset.queryset.count() == 2
    assert not inline.has_add_permission and not inline.has_delete_permission

    before = Notification.objects.get(pk=notification.pk).external_user_id
    admin_client.post(
        reverse("admin:notifications_notification_change", args=[notification.pk]),
        {"external_user_id": "tampered"},
    )
    assert Notification.objects.get(pk=notification.pk).external_user_id == before


def test_delivery_changelist_filters_and_searches(admin_client, log):
    url = reverse("admin:notifications_delivery_changelist")

    response = admin_client.get(url)
    assert len(_result_pks(response)) == 4

    failed = admin_client.get(url, {"status__exact": "failed", "channel__exact": "email"})
    assert _result_pks(failed) == {log["failed_email"].pk}
    assert len(_result_pks(admin_client.get(url, {"channel__exact": "inapp"}))) == 2
    assert _result_pks(admin_client.get(url, {"q": "bob"})) == {log["failed_email"].pk}
    assert len(_result_pks(admin_client.get(url, {"q": "m-42"}))) == 1
    assert admin_client.get(reverse("admin:notifications_delivery_add")).status_code == 403


def test_inbox_message_changelist(admin_client, log):
    delivery = Delivery.objects.get(notification=log["sent"], channel="inapp")
    message = InboxMessage.objects.create(
        recipient=log["sent"].recipient, delivery=delivery, title="Order 9 shipped"
    )
    url = reverse("admin:notifications_inboxmessage_changelist")

    response = admin_client.get(url)
    assert _result_pks(response) == {message.pk}
    assert b"Order 9 shipped" in response.content
    assert _result_pks(admin_client.get(url, {"q": "nobody"})) == set()


# --- dead letters ------------------------------------------------------------------------


def test_failed_delivery_changelist_filters(admin_client, log):
    unreplayed = _dead_letter(log["failed_email"], error_message="x" * 500)
    inapp = DeliveryFactory(
        notification__event=log["sent"].event, channel="inapp", status=DeliveryStatus.FAILED
    )
    replayed = _dead_letter(inapp, replayed_by="someone")
    FailedDelivery.objects.filter(pk=replayed.pk).update(replayed_at=replayed.failed_at)
    url = reverse("admin:notifications_faileddelivery_changelist")

    response = admin_client.get(url)
    assert _result_pks(response) == {unreplayed.pk, replayed.pk}
    assert b"x" * 500 not in response.content  # the message column is truncated

    assert _result_pks(admin_client.get(url, {"delivery__channel": "email"})) == {unreplayed.pk}
    assert _result_pks(admin_client.get(url, {"replayed": "no"})) == {unreplayed.pk}
    assert _result_pks(admin_client.get(url, {"replayed": "yes"})) == {replayed.pk}
    assert _result_pks(admin_client.get(url, {"q": "bob"})) == {unreplayed.pk}


def test_delivery_and_dead_letter_pages_are_read_only(admin_client, log):
    letter = _dead_letter(log["failed_email"], traceback="Traceback (most recent call last)")

    for name, obj in (("delivery", log["failed_email"]), ("faileddelivery", letter)):
        response = admin_client.get(reverse(f"admin:notifications_{name}_change", args=[obj.pk]))
        assert response.status_code == 200
        assert response.context["has_change_permission"] is False
        assert admin_client.get(reverse(f"admin:notifications_{name}_add")).status_code == 403
    assert b"Traceback (most recent call last)" in response.content


def _replay(admin_client, letters: list[FailedDelivery], capture) -> list[str]:
    with capture(execute=True):
        response = admin_client.post(
            reverse("admin:notifications_faileddelivery_changelist"),
            {"action": "replay_selected", ACTION_CHECKBOX_NAME: [fd.pk for fd in letters]},
            follow=True,
        )
    # Following the redirect renders (and so consumes) the messages of this action only.
    assert response.redirect_chain[-1][1] == 302
    return [str(m) for m in response.context["messages"]]


def test_replay_selected_requeues_once(
    admin_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    delivery = DeliveryFactory(
        notification__event=order_shipped, channel="email", status=DeliveryStatus.FAILED, attempts=1
    )
    letter = _dead_letter(delivery)

    first = _replay(admin_client, [letter], django_capture_on_commit_callbacks)

    delivery.refresh_from_db()
    letter.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED
    assert letter.replayed_at is not None
    assert letter.replayed_by == "admin"
    assert broker.queued(EMAIL.queue) == 1
    assert first == ["Replayed 1 of 1 selected dead letters."]

    second = _replay(admin_client, [letter], django_capture_on_commit_callbacks)

    assert second == ["Replayed 0 of 1 selected dead letters. 1 skipped: already replayed."]
    assert broker.queued(EMAIL.queue) == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.QUEUED


def test_replay_selected_reports_a_mixed_selection(
    admin_client, order_shipped, broker, django_capture_on_commit_callbacks
):
    fresh = _dead_letter(
        DeliveryFactory(
            notification__event=order_shipped, channel="sms", status=DeliveryStatus.FAILED
        )
    )
    done = _dead_letter(
        DeliveryFactory(
            notification__event=order_shipped, channel="email", status=DeliveryStatus.QUEUED
        )
    )
    FailedDelivery.objects.filter(pk=done.pk).update(
        replayed_at=done.failed_at, replayed_by="earlier"
    )

    messages = _replay(admin_client, [fresh, done], django_capture_on_commit_callbacks)

    assert messages == ["Replayed 1 of 2 selected dead letters. 1 skipped: already replayed."]
    assert (broker.queued(SMS.queue), broker.queued(EMAIL.queue)) == (1, 0)
    done.refresh_from_db()
    assert done.replayed_by == "earlier"


def _staff_with(django_user_model, *codenames: str):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_replay_needs_its_own_permission_not_change(
    client, order_shipped, broker, django_user_model
):
    # Viewing and even changing dead letters does not allow sending messages again.
    client.force_login(
        _staff_with(django_user_model, "view_faileddelivery", "change_faileddelivery")
    )
    letter = _dead_letter(
        DeliveryFactory(
            notification__event=order_shipped, channel="email", status=DeliveryStatus.FAILED
        )
    )
    url = reverse("admin:notifications_faileddelivery_changelist")

    response = client.get(url)
    assert response.status_code == 200
    assert b"replay_selected" not in response.content
    client.post(url, {"action": "replay_selected", ACTION_CHECKBOX_NAME: [letter.pk]})

    letter.refresh_from_db()
    assert letter.replayed_at is None
    assert broker.queued(EMAIL.queue) == 0


def test_the_replay_permission_allows_replaying(
    client, order_shipped, broker, django_user_model, django_capture_on_commit_callbacks
):
    client.force_login(
        _staff_with(django_user_model, "view_faileddelivery", "replay_faileddelivery")
    )
    letter = _dead_letter(
        DeliveryFactory(
            notification__event=order_shipped, channel="email", status=DeliveryStatus.FAILED
        )
    )

    assert (
        b"replay_selected"
        in client.get(reverse("admin:notifications_faileddelivery_changelist")).content
    )
    assert _replay(client, [letter], django_capture_on_commit_callbacks) == [
        "Replayed 1 of 1 selected dead letters."
    ]
    assert broker.queued(EMAIL.queue) == 1


def test_the_admin_is_for_staff_only(client, django_user_model):
    user = django_user_model.objects.create_user("someone", password="pw", is_staff=False)
    client.force_login(user)

    for name in ("faileddelivery", "notification"):
        response = client.get(reverse(f"admin:notifications_{name}_changelist"))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_an_api_key_made_in_the_admin_has_the_scopes_ticked(admin_client):
    from rest_framework_api_key.models import APIKey

    response = admin_client.post(
        reverse("admin:rest_framework_api_key_apikey_add"),
        {
            "name": "billing",
            "access-TOTAL_FORMS": "1",
            "access-INITIAL_FORMS": "0",
            "access-MIN_NUM_FORMS": "1",
            "access-MAX_NUM_FORMS": "1",
            "access-0-scopes": ["notify", "read"],
            "access-0-rate_limit": "20/second",
        },
        follow=True,
    )

    assert response.status_code == 200
    api_key = APIKey.objects.select_related("access").get(name="billing")
    assert api_key.access.scopes == ["notify", "read"]
    assert api_key.access.rate_limit == "20/second"
    # The library's admin shows the key once, in a message; it works with those scopes only.
    shown = next(str(m) for m in response.context["messages"] if "API key for" in str(m))
    key = shown.split(" is: ")[1].split(". ")[0]
    assert api_key.is_valid(key)
    changelist = admin_client.get(reverse("admin:rest_framework_api_key_apikey_changelist"))
    assert b"notify, read" in changelist.content


def test_template_locale_is_stored_canonical_and_validated(admin_client, order_shipped):
    url = reverse("admin:notifications_template_add")
    fields = {"event": order_shipped.pk, "channel": "sms", "body": "Pedido {{ id }}"}

    assert admin_client.post(url, {**fields, "locale": "pt_br"}).status_code == 302
    assert Template.objects.filter(event=order_shipped, channel="sms", locale="pt-BR").exists()

    response = admin_client.post(url, {**fields, "locale": "not a locale!"})
    assert "locale" in response.context["adminform"].form.errors
