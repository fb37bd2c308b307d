from __future__ import annotations

import uuid
from typing import Any, cast

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from notifications import selectors, services
from notifications.api.fields import (
    EVENT_MAX_LENGTH,
    RejectUnknownFieldsMixin,
    SlugField,
    StrictChoiceField,
    UserIdField,
)
from notifications.api.idempotency import IDEMPOTENCY_KEY_HEADER, idempotency_key
from notifications.api.pagination import StrictCursorPagination, filter_params
from notifications.api.requests import StrictRequestMixin
from notifications.api.schema import ERROR_RESPONSE
from notifications.api.serializers import (
    NotificationSerializer,
    NotifyRequestSerializer,
    NotifyResponseSerializer,
)
from notifications.exceptions import NotFound
from notifications.models import ApiScope, DeliveryStatus


class NotifyView(StrictRequestMixin, APIView):
    required_scope = ApiScope.NOTIFY

    @extend_schema(
        request=NotifyRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={
            202: NotifyResponseSerializer,
            200: OpenApiResponse(NotifyResponseSerializer, description="Idempotent replay."),
            400: ERROR_RESPONSE,
            401: ERROR_RESPONSE,
            404: ERROR_RESPONSE,
            409: ERROR_RESPONSE,
            413: ERROR_RESPONSE,
            415: ERROR_RESPONSE,
            422: ERROR_RESPONSE,
        },
        summary="Notify a user of an event",
    )
    def post(self, request: Request) -> Response:
        serializer = NotifyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload: dict[str, Any] = serializer.validated_data
        key = idempotency_key(request, payload.get("idempotencyKey"))
        result = services.notification_accept(
            api_key=cast(APIKey, request.auth),
            user_id=payload["userId"],
            event_key=payload["event"],
            channels=payload.get("channels"),
            data=payload["data"],
            idempotency_key=key,
            priority=payload.get("priority"),
        )
        if result.replayed:
            return Response(result.body, status=200, headers={"Idempotent-Replayed": "true"})
        return Response(result.body, status=status.HTTP_202_ACCEPTED)


class NotificationDetailView(StrictRequestMixin, APIView):
    required_scope = ApiScope.READ

    @extend_schema(responses={200: NotificationSerializer, 404: ERROR_RESPONSE})
    def get(self, request: Request, notification_id: uuid.UUID) -> Response:
        notification = selectors.notification_get(notification_id=notification_id)
        if notification is None:
            raise NotFound("No such notification.")
        return Response(NotificationSerializer(notification).data)


class NewestFirst(StrictCursorPagination):
    # Rows committed in one transaction share created_at (PostgreSQL now()); the cursor pages
    # through ties by offset, which only holds if the tie order is fixed, hence the id.
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 500


class NotificationFilterSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    # Unknown parameters are refused: a misspelt filter would otherwise list everything.
    userId = UserIdField(required=False)
    event = SlugField(required=False, max_length=EVENT_MAX_LENGTH)
    status = StrictChoiceField(choices=DeliveryStatus.choices, required=False)
    channel = StrictChoiceField(choices=Channel.choices, required=False)


@extend_schema(parameters=[NotificationFilterSerializer])
class NotificationListView(StrictRequestMixin, ListAPIView):  # type: ignore[type-arg]
    required_scope = ApiScope.READ

    serializer_class = NotificationSerializer
    pagination_class = NewestFirst
    filter_serializer_class = NotificationFilterSerializer

    def get_queryset(self) -> Any:
        filters = NotificationFilterSerializer(data=filter_params(self.request, self.paginator))
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        return selectors.notifications_list(
            user_id=given.get("userId"),
            event=given.get("event"),
            status=given.get("status"),
            channel=given.get("channel"),
        )
