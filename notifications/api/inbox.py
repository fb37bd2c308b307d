"""The inbox API: what a client app shows a recipient, authenticated as that recipient.

Every query and change is scoped to the token's recipient (docs/inbox.md). The views take a
recipient token only (notifications.api.recipient_auth) and are rate-limited per recipient.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.fields import RejectUnknownFieldsMixin, SlugField, StrictChoiceField
from notifications.api.pagination import StrictCursorPagination, filter_params
from notifications.api.recipient_auth import (
    IsRecipient,
    RecipientClient,
    RecipientTokenAuthentication,
)
from notifications.api.requests import StrictRequestMixin
from notifications.api.schema import ERROR_RESPONSE
from notifications.api.throttling import RecipientRateThrottle
from notifications.exceptions import NotFound
from notifications.models import InboxMessage
from notifications.services.inbox import InboxAction, inbox_mark, inbox_mark_all_read
from preferences import access


class InboxMessageSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    actionUrl = serializers.CharField(source="url")
    createdAt = serializers.DateTimeField(source="created_at")
    readAt = serializers.DateTimeField(source="read_at", allow_null=True)
    seenAt = serializers.DateTimeField(source="seen_at", allow_null=True)
    archivedAt = serializers.DateTimeField(source="archived_at", allow_null=True)

    class Meta:
        model = InboxMessage
        fields = (
            "id",
            "title",
            "body",
            "actionUrl",
            "category",
            "data",
            "createdAt",
            "readAt",
            "seenAt",
            "archivedAt",
        )
        read_only_fields = fields


class InboxCountSerializer(serializers.Serializer):  # type: ignore[type-arg]
    unread = serializers.IntegerField()
    unseen = serializers.IntegerField()


class PreferenceLinkSerializer(serializers.Serializer):  # type: ignore[type-arg]
    url = serializers.CharField(help_text="The recipient's preference centre (a signed link).")


class InboxReadAllSerializer(serializers.Serializer):  # type: ignore[type-arg]
    updated = serializers.IntegerField(help_text="How many messages were unread.")


_BOOLEAN = ("true", "false")


class InboxFilterSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    unread = StrictChoiceField(choices=_BOOLEAN, required=False, help_text="Only unread / read.")
    archived = StrictChoiceField(
        choices=_BOOLEAN, required=False, help_text="The archived messages instead (default false)."
    )
    category = SlugField(required=False, max_length=64)


class NewestFirst(StrictCursorPagination):
    ordering = ("-id",)  # ids grow with time; the indexes are (recipient, …, -id)
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 200


class RecipientView(StrictRequestMixin, APIView):
    authentication_classes = [RecipientTokenAuthentication]
    permission_classes = [IsRecipient]
    throttle_classes = [RecipientRateThrottle]

    def recipient_id(self) -> int:
        client = self.request.user
        assert isinstance(client, RecipientClient)
        return client.recipient_id


@extend_schema(parameters=[InboxFilterSerializer], summary="The recipient's inbox, newest first")
class InboxListView(RecipientView, ListAPIView):  # type: ignore[type-arg]
    serializer_class = InboxMessageSerializer
    pagination_class = NewestFirst
    filter_serializer_class = InboxFilterSerializer

    def get_queryset(self) -> Any:
        filters = InboxFilterSerializer(data=filter_params(self.request, self.paginator))
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        return selectors.inbox_messages(
            recipient_id=self.recipient_id(),
            unread=None if "unread" not in given else given["unread"] == "true",
            archived=given.get("archived") == "true",
            category=given.get("category"),
        )


class InboxCountView(RecipientView):
    @extend_schema(responses={200: InboxCountSerializer}, summary="Unread and unseen counts")
    def get(self, request: Request) -> Response:
        return Response(selectors.inbox_counts(recipient_id=self.recipient_id()))


class InboxActionView(RecipientView):
    """``POST /api/inbox/{id}/{action}``; the action is fixed per route (config/urls.py)."""

    takes_empty_body = True
    inbox_action: InboxAction = InboxAction.READ

    @extend_schema(
        request=None,
        responses={200: InboxMessageSerializer, 404: ERROR_RESPONSE},
        summary="Mark one message (read, unread, seen, archive, unarchive)",
    )
    def post(self, request: Request, message_id: int) -> Response:
        message = inbox_mark(
            recipient_id=self.recipient_id(), message_id=message_id, action=self.inbox_action
        )
        if message is None:
            raise NotFound("No such message in this inbox.")
        return Response(InboxMessageSerializer(message).data)


class InboxReadAllView(RecipientView):
    takes_empty_body = True

    @extend_schema(
        request=None,
        responses={200: InboxReadAllSerializer},
        summary="Mark every unarchived message read",
    )
    def post(self, request: Request) -> Response:
        return Response({"updated": inbox_mark_all_read(recipient_id=self.recipient_id())})


class InboxPreferenceLinkView(RecipientView):
    @extend_schema(
        responses={200: PreferenceLinkSerializer},
        summary="A link to the recipient's preference centre",
    )
    def get(self, request: Request) -> Response:
        client = request.user
        assert isinstance(client, RecipientClient)
        claims = request.auth
        assert isinstance(claims, access.TokenClaims)
        url = access.preference_centre_url(
            recipient_id=client.recipient_id, generation=claims.generation
        )
        return Response({"url": url})
