from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.fields import RejectUnknownFieldsMixin, StrictCharField, StrictChoiceField
from notifications.api.pagination import StrictCursorPagination, filter_params
from notifications.api.requests import StrictRequestMixin
from notifications.api.views import ERROR_RESPONSE
from notifications.exceptions import NotFound, RecipientNotFound
from notifications.models import ApiScope
from notifications.services import erasure
from preferences import access, selectors, services
from preferences.api.serializers import (
    DEVICE_REGISTRATION_SCHEMA,
    DeviceSerializer,
    PreferencesSerializer,
    RecipientSerializer,
    RecipientTokenRequestSerializer,
    RecipientTokenSerializer,
    SuppressionSerializer,
    preference_representation,
)
from preferences.models import Preference, Recipient


def _recipient_or_404(user_id: str) -> Recipient:
    recipient = selectors.recipient_get(external_id=user_id)
    if recipient is None:
        raise RecipientNotFound(f"No recipient with userId {user_id!r}.")
    return recipient


class RecipientView(StrictRequestMixin, APIView):
    required_scope = ApiScope.RECIPIENTS

    @extend_schema(responses={200: RecipientSerializer, 404: ERROR_RESPONSE})
    def get(self, request: Request, user_id: str) -> Response:
        return Response(RecipientSerializer(_recipient_or_404(user_id)).data)

    @extend_schema(
        request=RecipientSerializer,
        responses={200: RecipientSerializer, 201: RecipientSerializer, 400: ERROR_RESPONSE},
        summary="Create or replace a recipient",
    )
    def put(self, request: Request, user_id: str) -> Response:
        serializer = RecipientSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        recipient, created = services.recipient_upsert(
            external_id=user_id, **serializer.validated_data
        )
        return Response(
            RecipientSerializer(recipient).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(responses={204: None, 404: ERROR_RESPONSE}, summary="Erase personal data")
    def delete(self, request: Request, user_id: str) -> Response:
        erasure.recipient_erase(recipient=_recipient_or_404(user_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RecipientTokensView(StrictRequestMixin, APIView):
    """Credentials for a client app to read this recipient's inbox (docs/inbox.md)."""

    required_scope = ApiScope.TOKENS

    @extend_schema(
        request=RecipientTokenRequestSerializer,
        responses={201: RecipientTokenSerializer, 400: ERROR_RESPONSE, 404: ERROR_RESPONSE},
        summary="Mint a recipient token for the inbox API",
    )
    def post(self, request: Request, user_id: str) -> Response:
        recipient = _recipient_or_404(user_id)
        serializer = RecipientTokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ttl = serializer.validated_data.get(
            "expiresIn", settings.NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS
        )
        token, expires_at = services.recipient_token_mint(recipient=recipient, ttl_seconds=ttl)
        body = {
            "userId": recipient.external_id,
            "token": token,
            "expiresAt": datetime.fromtimestamp(expires_at, tz=UTC),
            "preferencesUrl": access.preference_centre_url(
                recipient_id=recipient.pk, generation=recipient.token_generation
            ),
        }
        return Response(RecipientTokenSerializer(body).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={204: None, 404: ERROR_RESPONSE},
        summary="Revoke every token minted for this recipient so far",
    )
    def delete(self, request: Request, user_id: str) -> Response:
        services.recipient_tokens_revoke(recipient=_recipient_or_404(user_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DevicesById(StrictCursorPagination):
    # Inactive devices are kept (dead tokens, devices replaced beyond the cap), so a recipient
    # can have any number: pages, not a silent cut. (recipient, id) is an index: each page is a
    # range scan.
    ordering = ("id",)
    page_size = 100
    page_size_query_param = "pageSize"
    max_page_size = 500


@extend_schema_view(get=extend_schema(summary="List a recipient's devices"))
class DeviceListView(StrictRequestMixin, ListAPIView):  # type: ignore[type-arg]
    """A recipient's push devices. The list has them all, active and deactivated (with the
    reason), oldest first, in pages. At most ``NOTIFY_MAX_DEVICES_PER_RECIPIENT`` are active: a
    registration beyond it deactivates the device registered longest ago ("replaced: more than
    N devices")."""

    required_scope = ApiScope.RECIPIENTS

    serializer_class = DeviceSerializer
    pagination_class = DevicesById

    def get_queryset(self) -> Any:
        return selectors.recipient_devices(recipient=_recipient_or_404(self.kwargs["user_id"]))

    @extend_schema(
        request={"application/json": DEVICE_REGISTRATION_SCHEMA},
        responses={200: DeviceSerializer, 201: DeviceSerializer, 400: ERROR_RESPONSE},
        summary="Register a push token",
    )
    def post(self, request: Request, user_id: str) -> Response:
        recipient = _recipient_or_404(user_id)
        serializer = DeviceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        registration = services.device_register(
            recipient=recipient,
            platform=serializer.validated_data["platform"],
            token=serializer.validated_data["token"],
        )
        return Response(
            DeviceSerializer(registration.device).data,
            status=status.HTTP_201_CREATED if registration.created else status.HTTP_200_OK,
        )


class DeviceDetailView(StrictRequestMixin, APIView):
    required_scope = ApiScope.RECIPIENTS

    @extend_schema(responses={204: None, 404: ERROR_RESPONSE})
    def delete(self, request: Request, user_id: str, device_id: int) -> Response:
        recipient = _recipient_or_404(user_id)
        if not services.device_remove(recipient=recipient, device_id=device_id):
            raise NotFound("No such device for this recipient.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class PreferencesView(StrictRequestMixin, APIView):
    required_scope = ApiScope.RECIPIENTS

    @extend_schema(responses={200: PreferencesSerializer, 404: ERROR_RESPONSE})
    def get(self, request: Request, user_id: str) -> Response:
        recipient = _recipient_or_404(user_id)
        rules = Preference.objects.filter(recipient=recipient).select_related("category")
        return Response(
            {"preferences": [preference_representation(rule) for rule in rules.order_by("id")]}
        )

    @extend_schema(
        request=PreferencesSerializer,
        responses={200: PreferencesSerializer, 400: ERROR_RESPONSE, 404: ERROR_RESPONSE},
        summary="Replace all preference rules",
    )
    def put(self, request: Request, user_id: str) -> Response:
        recipient = _recipient_or_404(user_id)
        serializer = PreferencesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rules = [
            services.Rule(
                category=rule.get("category"),
                channel=rule.get("channel"),
                enabled=rule["enabled"],
            )
            for rule in serializer.validated_data["preferences"]
        ]
        saved = services.preferences_replace(recipient=recipient, rules=rules)
        return Response({"preferences": [preference_representation(rule) for rule in saved]})


class SuppressionFilterSerializer(RejectUnknownFieldsMixin, serializers.Serializer):  # type: ignore[type-arg]
    # Unknown parameters are refused: a misspelt filter would otherwise list everything.
    channel = StrictChoiceField(choices=[("email", "email"), ("sms", "sms")], required=False)
    address = StrictCharField(required=False, max_length=320)


class NewestSuppressionsFirst(StrictCursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 500


@extend_schema_view(get=extend_schema(parameters=[SuppressionFilterSerializer]))
class SuppressionListView(StrictRequestMixin, ListAPIView):  # type: ignore[type-arg]
    """Destinations we no longer send to (hard bounces, complaints, SMS STOP, manual)."""

    required_scope = ApiScope.RECIPIENTS
    serializer_class = SuppressionSerializer
    pagination_class = NewestSuppressionsFirst
    filter_serializer_class = SuppressionFilterSerializer

    def get_queryset(self) -> Any:
        filters = SuppressionFilterSerializer(data=filter_params(self.request, self.paginator))
        filters.is_valid(raise_exception=True)
        return selectors.suppressions_list(**filters.validated_data)

    @extend_schema(
        request=SuppressionSerializer,
        responses={200: SuppressionSerializer, 201: SuppressionSerializer, 400: ERROR_RESPONSE},
        summary="Suppress a destination by hand",
    )
    def post(self, request: Request) -> Response:
        serializer = SuppressionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        suppression, created = services.suppression_add(
            channel=serializer.validated_data["channel"],
            address=serializer.validated_data["address"],
            reason=serializer.validated_data["reason"],
            provider="api",
        )
        return Response(
            SuppressionSerializer(suppression).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class SuppressionDetailView(StrictRequestMixin, APIView):
    required_scope = ApiScope.RECIPIENTS

    @extend_schema(responses={204: None, 404: ERROR_RESPONSE}, summary="Allow a destination again")
    def delete(self, request: Request, suppression_id: int) -> Response:
        if not services.suppression_remove(suppression_id=suppression_id):
            raise NotFound("No such suppression.")
        return Response(status=status.HTTP_204_NO_CONTENT)
