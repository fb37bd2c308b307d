"""Topics: named audiences for broadcasts, and their subscribers.

``PUT|GET /api/topics/{key}``, ``POST|DELETE|GET /api/topics/{key}/subscribers``.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.broadcasts import BulkJSONParser
from notifications.api.fields import (
    SLUG_PATTERN,
    TOPIC_MAX_LENGTH,
    RejectUnknownFieldsMixin,
    SlugField,
    StrictCharField,
    UniqueListField,
    UserIdField,
    ecma_pattern,
)
from notifications.api.pagination import StrictCursorPagination
from notifications.api.requests import StrictRequestMixin
from notifications.api.views import ERROR_RESPONSE
from notifications.exceptions import NotFound
from notifications.models import ApiScope
from preferences import selectors, services
from preferences.models import Topic, TopicSubscription

MAX_USER_IDS_PER_CHANGE = 1000


class TopicNotFound(NotFound):
    code = "topic_not_found"


class TopicSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    name = StrictCharField(max_length=255, required=False, allow_blank=True, default="")


def topic_representation(topic: Topic, subscribers: int) -> dict[str, Any]:
    return {
        "key": topic.key,
        "name": topic.name,
        "subscribers": subscribers,
        "createdAt": topic.created_at.isoformat(),
    }


_TOPIC = OpenApiResponse(description='{"key", "name", "subscribers", "createdAt"}')


# What a new topic's key may be (validated in TopicView.put).
TOPIC_KEY = OpenApiParameter(
    "key",
    {"type": "string", "pattern": ecma_pattern(SLUG_PATTERN), "maxLength": TOPIC_MAX_LENGTH},
    OpenApiParameter.PATH,
    required=True,
)


def _topic_or_404(key: str) -> Topic:
    # A key that is not a slug names no topic (and one with NUL could not even be looked up).
    topic = selectors.topic_get(key=key) if re.search(SLUG_PATTERN, key) else None
    if topic is None:
        raise TopicNotFound(f"No topic {key!r}.")
    return topic


class TopicView(StrictRequestMixin, APIView):
    required_scope = ApiScope.RECIPIENTS

    @extend_schema(responses={200: _TOPIC, 404: ERROR_RESPONSE})
    def get(self, request: Request, key: str) -> Response:
        topic = _topic_or_404(key)
        return Response(topic_representation(topic, topic.subscriber_count))  # type: ignore[attr-defined]

    @extend_schema(
        request=TopicSerializer,
        parameters=[TOPIC_KEY],
        responses={200: _TOPIC, 201: _TOPIC, 400: ERROR_RESPONSE},
        summary="Create a topic or rename it",
    )
    def put(self, request: Request, key: str) -> Response:
        try:
            SlugField(max_length=TOPIC_MAX_LENGTH).run_validation(key)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"key": exc.detail}) from exc
        serializer = TopicSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        topic, created = services.topic_upsert(key=key, name=serializer.validated_data["name"])
        counted = selectors.topic_get(key=key)
        return Response(
            topic_representation(topic, counted.subscriber_count if counted else 0),  # type: ignore[attr-defined]
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class UserIdsSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    userIds = UniqueListField(child=UserIdField(), min_length=1, max_length=MAX_USER_IDS_PER_CHANGE)


class SubscriberSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    userId = serializers.CharField(source="recipient.external_id")
    subscribedAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = TopicSubscription
        fields = ["userId", "subscribedAt"]


class ByRecipient(StrictCursorPagination):
    # Recipient ids are unique within a topic, and (topic, recipient) is the unique index:
    # every page is an index range scan, however deep.
    ordering = ("recipient_id",)
    page_size = 100
    page_size_query_param = "pageSize"
    max_page_size = 1000


_CHANGE = OpenApiResponse(
    description='{"added"|"removed": n, "unchanged": n, "unknownUserIds": [...]}; userIds with '
    "no recipient are reported, not created."
)


class TopicSubscribersView(StrictRequestMixin, ListAPIView):  # type: ignore[type-arg]
    required_scope = ApiScope.RECIPIENTS

    serializer_class = SubscriberSerializer
    pagination_class = ByRecipient
    parser_classes = [BulkJSONParser]

    def get_queryset(self) -> Any:
        return selectors.topic_subscriptions(topic=_topic_or_404(self.kwargs["key"]))

    @extend_schema(
        request=UserIdsSerializer,
        responses={200: _CHANGE, 400: ERROR_RESPONSE, 404: ERROR_RESPONSE, 413: ERROR_RESPONSE},
        summary="Subscribe users to a topic (up to 1,000 per call)",
    )
    def post(self, request: Request, key: str) -> Response:
        topic = _topic_or_404(key)
        user_ids = self._user_ids(request)
        change = services.topic_subscribe(topic=topic, external_ids=user_ids)
        return Response(
            {
                "added": change.changed,
                "unchanged": change.unchanged,
                "unknownUserIds": change.unknown_user_ids,
            }
        )

    @extend_schema(
        request=UserIdsSerializer,
        responses={200: _CHANGE, 400: ERROR_RESPONSE, 404: ERROR_RESPONSE, 413: ERROR_RESPONSE},
        summary="Unsubscribe users from a topic (up to 1,000 per call)",
    )
    def delete(self, request: Request, key: str) -> Response:
        topic = _topic_or_404(key)
        user_ids = self._user_ids(request)
        change = services.topic_unsubscribe(topic=topic, external_ids=user_ids)
        return Response(
            {
                "removed": change.changed,
                "unchanged": change.unchanged,
                "unknownUserIds": change.unknown_user_ids,
            }
        )

    @staticmethod
    def _user_ids(request: Request) -> list[str]:
        serializer = UserIdsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return list(serializer.validated_data["userIds"])
