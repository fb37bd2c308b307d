"""The service's routes plus ``POST /bench/bare-insert``, the baseline of the accept benchmark."""

from __future__ import annotations

from django.urls import path

from bench.bare import BareInsertView
from config.urls import handler400, handler404, handler500
from config.urls import urlpatterns as service_urlpatterns

urlpatterns = [
    *service_urlpatterns,
    path("bench/bare-insert", BareInsertView.as_view(), name="bench-bare-insert"),
]

__all__ = ["handler400", "handler404", "handler500", "urlpatterns"]
