"""The ASGI process (``uvicorn config.asgi:application``): the inbox's real-time stream.

``/api/inbox/stream`` is served by a plain ASGI endpoint (``notifications.stream``), so an
open stream holds no worker; every other path goes to Django, as under gunicorn, so the
process can also stand in for the WSGI one.
"""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()  # sets Django up before the imports below

from notifications.stream import app as stream  # noqa: E402


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await stream.hub().stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http" and scope["path"] == stream.PATH:
        await stream.inbox_stream(scope, receive, send)
        return
    await django_application(scope, receive, send)
