"""The baseline of the accept benchmark: authenticate, parse JSON, one INSERT, answer 202.

It pays what every request to the API pays (middleware, the API-key lookup, the bounded JSON
parser, the JSON renderer) and nothing that ``POST /api/notify`` adds on top (validation,
recipient, preferences and template look-ups, rendering, the transaction with its three
inserts, publishing to the broker). So notify/bare is the cost of our accept logic.
"""

from __future__ import annotations

import json

from django.db import connection
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.auth import ApiKeyAuthentication, HasApiKey
from notifications.api.parsers import BoundedJSONParser

# accept.py creates the table (CREATE TABLE IF NOT EXISTS) before the server starts.
_INSERT_SQL = "INSERT INTO bench_bare_insert (body) VALUES (%s::jsonb) RETURNING id"


class BareInsertView(APIView):
    # Named explicitly (they equal the REST_FRAMEWORK defaults that NotifyView uses) so a
    # change of the defaults cannot silently make the baseline cheaper than the real path.
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    parser_classes = [BoundedJSONParser]

    def post(self, request: Request) -> Response:
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_SQL, [json.dumps(request.data)])
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id}, status=202)
