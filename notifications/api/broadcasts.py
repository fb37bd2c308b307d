"""``POST /api/broadcasts``, ``GET /api/broadcasts/{id}``, ``POST /api/broadcasts/{id}/cancel``."""

from __future__ import annotations

import uuid
from typing import Any, cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.models import APIKey

from channels.base import Channel
from notifications.api.fields import (
    EVENT_MAX_LENGTH,
    TOPIC_MAX_LENGTH,
    RejectUnknownFieldsMixin,
    SlugField,
    StrictCharField,
    StrictChoiceField,
    TrueField,
    UniqueListField,
    UserIdField,
    reject_unstorable_json,
)
from notifications.api.idempotency import IDEMPOTENCY_KEY_HEADER, idempotency_key
from notifications.api.parsers import (
    BoundedJSONParser,
)
from notifications.api.requests import StrictRequestMixin
from notifications.api.views import ERROR_RESPONSE
from notifications.exceptions import NotFound
from notifications.models import ApiScope, Broadcast
from notifications.services import broadcasts

MAX_AUDIENCE_USER_IDS = 10_000


class BulkJSONParser(BoundedJSONParser):
    """The bulk endpoints' larger limit: 10,000 userIds do not fit in the 64 KiB that single
    requests get."""

    limit_setting = "NOTIFY_FANOUT_MAX_BODY_BYTES"


class AudienceSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    topic = SlugField(max_length=TOPIC_MAX_LENGTH, required=False)
    userIds = UniqueListField(
        child=UserIdField(),
        required=False,
        min_length=1,
        max_length=MAX_AUDIENCE_USER_IDS,
    )
    all = TrueField(required=False)

    # Stated in the schema too (notifications.api.schema reads it).
    openapi_object = {"minProperties": 1, "maxProperties": 1}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) != 1:
            raise serializers.ValidationError(
                'Give exactly one of {"topic": key}, {"userIds": [...]} or {"all": true}.'
            )
        return attrs


class BroadcastRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    event = SlugField(max_length=EVENT_MAX_LENGTH)
    audience = AudienceSerializer()
    channels = UniqueListField(
        child=StrictChoiceField(choices=Channel.choices),
        required=False,
        min_length=1,
        max_length=len(Channel.choices),
    )
    data = serializers.DictField(required=False, default=dict)  # type: ignore[assignment]
    idempotencyKey = StrictCharField(max_length=255, required=False)

    def validate_data(self, value: dict[str, Any]) -> dict[str, Any]:
        reject_unstorable_json(value)
        return value


class BroadcastAcceptedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    status = serializers.CharField()


class BroadcastListView(StrictRequestMixin, APIView):
    required_scope = ApiScope.BROADCAST

    parser_classes = [BulkJSONParser]

    @extend_schema(
        request=BroadcastRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={
            202: BroadcastAcceptedSerializer,
            200: OpenApiResponse(BroadcastAcceptedSerializer, description="Idempotent replay."),
            400: ERROR_RESPONSE,
            401: ERROR_RESPONSE,
            409: ERROR_RESPONSE,
            413: ERROR_RESPONSE,
            415: ERROR_RESPONSE,
            422: ERROR_RESPONSE,
        },
        summary="Broadcast an event to a topic, a list of users or everyone",
    )
    def post(self, request: Request) -> Response:
        serializer = BroadcastRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        payload: dict[str, Any] = serializer.validated_data
        result = broadcasts.broadcast_accept(
            api_key=cast(APIKey, request.auth),
            event_key=payload["event"],
            audience=dict(payload["audience"]),
            channels=payload.get("channels"),
            data=payload["data"],
            idempotency_key=idempotency_key(request, payload.get("idempotencyKey")),
        )
        if result.replayed:
            return Response(result.body, status=200, headers={"Idempotent-Replayed": "true"})
        return Response(result.body, status=status.HTTP_202_ACCEPTED)


def _audience_summary(audience: dict[str, Any]) -> dict[str, Any]:
    # Progress is polled; echoing 10,000 userIds on every poll would dwarf the answer.
    if "userIds" in audience:
        return {"userIds": len(audience["userIds"])}
    return audience


def broadcast_representation(broadcast: Broadcast) -> dict[str, Any]:
    counts, counted_at = broadcasts.broadcast_progress(broadcast=broadcast)
    return {
        "id": str(broadcast.pk),
        "event": broadcast.event.key,
        "audience": _audience_summary(broadcast.audience),
        "channels": broadcast.channels,
        "status": broadcast.status,
        "recipientsTotal": broadcast.recipients_total,
        "createdAt": broadcast.created_at.isoformat(),
        "fannedOutAt": broadcast.fanned_out_at.isoformat() if broadcast.fanned_out_at else None,
        "cancelledAt": broadcast.cancelled_at.isoformat() if broadcast.cancelled_at else None,
        "deliveries": counts,
        # Polls share one count for a while (a count of millions takes seconds): its time.
        "countedAt": counted_at.isoformat(),
    }


_PROGRESS = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description="The broadcast, its recipients total and its deliveries counted by status "
    '(skipped ones also by reason), overall and per channel, as counted at "countedAt" (polls '
    'share one count for a few seconds, longer for a broadcast of millions). "audience" '
    "shows a userIds list as its length.",
)


class BroadcastDetailView(StrictRequestMixin, APIView):
    required_scope = ApiScope.BROADCAST

    @extend_schema(responses={200: _PROGRESS, 404: ERROR_RESPONSE}, summary="Broadcast progress")
    def get(self, request: Request, broadcast_id: uuid.UUID) -> Response:
        broadcast = broadcasts.broadcast_get(broadcast_id=broadcast_id)
        if broadcast is None:
            raise NotFound("No such broadcast.")
        return Response(broadcast_representation(broadcast))


class BroadcastCancelView(StrictRequestMixin, APIView):
    required_scope = ApiScope.BROADCAST
    takes_empty_body = True

    @extend_schema(
        request=None,
        responses={200: _PROGRESS, 404: ERROR_RESPONSE},
        summary="Cancel a broadcast: what has not been sent yet is skipped",
    )
    def post(self, request: Request, broadcast_id: uuid.UUID) -> Response:
        if not broadcasts.broadcast_cancel(broadcast_id=broadcast_id):
            raise NotFound("No such broadcast.")
        broadcast = broadcasts.broadcast_get(broadcast_id=broadcast_id)
        assert broadcast is not None
        return Response(broadcast_representation(broadcast))
