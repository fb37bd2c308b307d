from __future__ import annotations

import uuid
from typing import Any, cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from notifications import selectors, services
from notifications.api.fields import RejectUnknownFieldsMixin
from notifications.api.pagination import StrictCursorPagination, filter_params
from notifications.api.schema import ERROR_RESPONSE
from notifications.api.serializers import (
    NotificationSerializer,
    NotifyRequestSerializer,
    NotifyResponseSerializer,
)
from notifications.exceptions import NotFound, ServiceError
from notifications.models import ApiScope, DeliveryStatus


class NotifyView(APIView):
    required_scope = ApiScope.NOTIFY

    @extend_schema(
        request=NotifyRequestSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER)],
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
        header_key = request.headers.get("Idempotency-Key")
        body_key = payload.get("idempotencyKey")
        if header_key is not None and body_key is not None and header_key != body_key:
            raise ServiceError(
                "Idempotency-Key header and idempotencyKey differ.",
                fields={"idempotencyKey": ["Does not match the Idempotency-Key header."]},
            )
        idempotency_key = body_key or header_key or None
        if idempotency_key is not None and len(idempotency_key) > 255:
            raise ServiceError(
                "Idempotency key too long.",
                fields={"idempotencyKey": ["At most 255 characters."]},
            )
        result = services.notification_accept(
            api_key=cast(APIKey, request.auth),
            user_id=payload["userId"],
            event_key=payload["event"],
            channels=payload.get("channels"),
            data=payload["data"],
            idempotency_key=idempotency_key,
            priority=payload.get("priority"),
        )
        if result.replayed:
            return Response(result.body, status=200, headers={"Idempotent-Replayed": "true"})
        return Response(result.body, status=status.HTTP_202_ACCEPTED)


class NotificationDetailView(APIView):
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
    userId = serializers.CharField(required=False, max_length=255)
    event = serializers.CharField(required=False, max_length=128)
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)


@extend_schema(parameters=[NotificationFilterSerializer])
class NotificationListView(ListAPIView):  # type: ignore[type-arg]
    required_scope = ApiScope.READ

    serializer_class = NotificationSerializer
    pagination_class = NewestFirst

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
