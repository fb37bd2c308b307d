from django.contrib import admin
from django.urls import include, path, register_converter
from django.urls.converters import get_converters
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications.api import broadcasts as broadcast_views
from notifications.api import inbox as inbox_views
from notifications.api import views as notification_views
from notifications.demo import inbox_demo
from notifications.health import healthz
from notifications.services.inbox import InboxAction
from preferences.api import topics as topic_views
from preferences.api import views as recipient_views
from preferences.centre import preference_centre
from preferences.unsubscribe import unsubscribe


class UserIdConverter:
    """Any path segment: the views hold it to the userId rule (notifications.api.requests),
    so that a malformed one is a 400 naming the rule, as in a body, not a bare 404."""

    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


if "user_id" not in get_converters():  # the URLconf is rebuilt when the webhook routes change
    register_converter(UserIdConverter, "user_id")

api = [
    path("notify", notification_views.NotifyView.as_view(), name="notify"),
    path(
        "notifications",
        notification_views.NotificationListView.as_view(),
        name="notification-list",
    ),
    path(
        "notifications/<uuid:notification_id>",
        notification_views.NotificationDetailView.as_view(),
        name="notification-detail",
    ),
    path(
        "recipients/<user_id:user_id>",
        recipient_views.RecipientView.as_view(),
        name="recipient",
    ),
    path(
        "recipients/<user_id:user_id>/devices",
        recipient_views.DeviceListView.as_view(),
        name="recipient-devices",
    ),
    path(
        "recipients/<user_id:user_id>/devices/<int:device_id>",
        recipient_views.DeviceDetailView.as_view(),
        name="recipient-device",
    ),
    path(
        "recipients/<user_id:user_id>/preferences",
        recipient_views.PreferencesView.as_view(),
        name="recipient-preferences",
    ),
    path(
        "recipients/<user_id:user_id>/tokens",
        recipient_views.RecipientTokensView.as_view(),
        name="recipient-tokens",
    ),
    path("inbox", inbox_views.InboxListView.as_view(), name="inbox"),
    path("inbox/count", inbox_views.InboxCountView.as_view(), name="inbox-count"),
    path("inbox/read-all", inbox_views.InboxReadAllView.as_view(), name="inbox-read-all"),
    path(
        "inbox/preferences-link",
        inbox_views.InboxPreferenceLinkView.as_view(),
        name="inbox-preferences-link",
    ),
    *(
        path(
            f"inbox/<int:message_id>/{action}",
            inbox_views.InboxActionView.as_view(inbox_action=action),
            name=f"inbox-{action}",
        )
        for action in InboxAction
    ),
    path("suppressions", recipient_views.SuppressionListView.as_view(), name="suppressions"),
    path(
        "suppressions/<int:suppression_id>",
        recipient_views.SuppressionDetailView.as_view(),
        name="suppression",
    ),
    path("topics/<str:key>", topic_views.TopicView.as_view(), name="topic"),
    path(
        "topics/<str:key>/subscribers",
        topic_views.TopicSubscribersView.as_view(),
        name="topic-subscribers",
    ),
    path("broadcasts", broadcast_views.BroadcastListView.as_view(), name="broadcasts"),
    path(
        "broadcasts/<uuid:broadcast_id>",
        broadcast_views.BroadcastDetailView.as_view(),
        name="broadcast",
    ),
    path(
        "broadcasts/<uuid:broadcast_id>/cancel",
        broadcast_views.BroadcastCancelView.as_view(),
        name="broadcast-cancel",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("api/", include(api)),
    path("healthz", healthz, name="healthz"),
    path("unsubscribe/<str:token>", unsubscribe, name="unsubscribe"),
    path("demo/inbox", inbox_demo, name="inbox-demo"),
    path("preferences/<str:token>", preference_centre, name="preference-centre"),
    path("webhooks/", include("channels.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "notifications.api.errors.json_bad_request"
handler404 = "notifications.api.errors.json_not_found"
handler500 = "notifications.api.errors.json_server_error"
