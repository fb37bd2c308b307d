"""A small HTTP/2 client on asyncio for APNs: many requests in flight as streams over few TLS
connections, on the ``h2`` protocol library (the sans-I/O state machine httpx itself uses).

With 100 streams in flight on one connection the client costs about a quarter of a
millisecond of CPU per request (``bench/client_cost.py``); httpx's HTTP/2 clients, against
the same kind of sink, cost five to six times that. APNs needs no more than what is here:
POST with a small body, a status, headers and a small JSON answer.

Connections are opened lazily, up to ``max_connections`` per origin, a new one only when the
open ones have no free stream (the server's SETTINGS_MAX_CONCURRENT_STREAMS). A connection
the server retires (GOAWAY) takes no new request; requests it names as not processed (above
its last stream id) are sent again on another connection, which is safe; those it names as
taken but never answers raise ``GoAwayInFlight``: the server may have acted on them.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class StreamError(Exception):
    """The request failed on its connection (reset, connection lost)."""


class GoAwayInFlight(StreamError):
    """The server retired the connection with this request taken and unanswered."""


class _NotProcessed(StreamError):
    """The server retired the connection without taking this request: safe to send again."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stream:
    future: asyncio.Future[Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, authority: str) -> None:
        self.authority = authority
        # The headers sent are ours (lower-case names, no connection headers, values without
        # surrounding space: apns.py builds them so): h2 need not check and rewrite each one.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        # Huffman coding would save a few bytes of header per request and costs more CPU per
        # request than the rest of HPACK: not worth it to a provider a few hops away.
        self.h2.encoder.encode = functools.partial(self.h2.encoder.encode, huffman=False)  # type: ignore[method-assign]
        self.transport: asyncio.Transport | None = None
        self._flush_soon = False  # a write of what h2 has to send is scheduled
        self.streams: dict[int, _Stream] = {}
        self.retired = False  # GOAWAY received or connection lost: no new request
        self.changed = asyncio.Event()  # window or settings updated, or a stream ended
        self.settled = False  # the server's SETTINGS received

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(StreamError(f"HTTP/2 protocol error: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(StreamError(f"connection lost: {exc or 'closed by the server'}"))

    # --- requests -------------------------------------------------------------------------

    def free_streams(self) -> int:
        if self.retired:
            return 0
        # Until the server's SETTINGS arrive its limit is unknown (h2 assumes none): 100 is
        # the least RFC 9113 recommends a server allow, so it is safe to open that many.
        limit = self.h2.remote_settings.max_concurrent_streams if self.settled else 100
        return int(limit) - len(self.streams)

    async def request(self, path: str, headers: Sequence[tuple[str, str]], body: bytes) -> Response:
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        try:
            self.h2.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", self.authority),
                    (":path", path),
                    *headers,
                ],
            )
            await self._send_body(stream_id, body)
            self._schedule_flush()
            return await asyncio.shield(stream.future)
        except asyncio.CancelledError:
            # A timeout: forget the stream and tell the server, the connection stays usable.
            self._reset(stream_id)
            raise
        finally:
            self.streams.pop(stream_id, None)
            self.changed.set()

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self._flush()
                self.changed.clear()
                await self.changed.wait()
                continue
            self.h2.send_data(stream_id, bytes(view[:window]))
            view = view[window:]
        self.h2.end_stream(stream_id)

    def _reset(self, stream_id: int) -> None:
        try:
            self.h2.reset_stream(stream_id)
            self._flush()
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                # header_encoding="utf-8": names and values arrive as str.
                headers: dict[str, str] = {
                    str(name): str(value) for name, value in event.headers or []
                }
                stream.status = int(headers.pop(":status", "0"))
                stream.headers = headers
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.future.done():
                stream.future.set_result(
                    Response(stream.status, stream.headers, bytes(stream.body))
                )
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.future.done():
                stream.future.set_exception(
                    StreamError(f"stream reset by the server (error code {event.error_code})")
                )
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True
            self.changed.set()
        elif isinstance(event, h2.events.WindowUpdated):
            self.changed.set()

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.retired = True
        last = event.last_stream_id or 0
        detail = f"GOAWAY last_stream_id:{last}, error_code:{event.error_code}"
        for stream_id, stream in list(self.streams.items()):
            if stream.future.done():
                continue
            if stream_id > last:
                stream.future.set_exception(_NotProcessed(detail))
            else:
                stream.future.set_exception(GoAwayInFlight(detail))
        self.changed.set()

    def _fail_all(self, error: StreamError) -> None:
        self.retired = True
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)
        self.changed.set()

    def _schedule_flush(self) -> None:
        """Write at the end of this turn of the loop: the requests started in one turn (a
        chunk's sends all start together) go out in one TLS write instead of one each."""
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.retired = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """HTTP/2 to one origin over up to ``max_connections`` connections, on the running loop."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, *, max_connections: int = 2
    ) -> None:
        self.host, self.port, self.context = host, port, context
        self.max_connections = max(1, max_connections)
        self.connections: list[_Connection] = []
        self._opening = 0
        self._changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def post(self, path: str, headers: Sequence[tuple[str, str]], body: bytes) -> Response:
        for _ in range(self.max_connections + 2):
            connection = await self._connection()
            try:
                return await connection.request(path, headers, body)
            except _NotProcessed:
                continue  # the server did not take it: another connection may
            finally:
                self._changed.set()
        raise StreamError("every connection was retired before taking the request")

    async def _connection(self) -> _Connection:
        while True:
            self.connections = [c for c in self.connections if not c.retired or c.streams]
            usable = [c for c in self.connections if c.free_streams() > 0]
            if usable:
                return max(usable, key=_Connection.free_streams)
            live = [c for c in self.connections if not c.retired]
            if len(live) + self._opening < self.max_connections:
                return await self._open()
            self._changed.clear()
            await self._changed.wait()

    async def _open(self) -> _Connection:
        self._opening += 1
        try:
            authority = self.host if self.port == 443 else f"{self.host}:{self.port}"
            _, connection = await self.loop.create_connection(
                lambda: _Connection(authority),
                self.host,
                self.port,
                ssl=self.context,
                server_hostname=self.host,
            )
        finally:
            self._opening -= 1
            self._changed.set()
        self.connections.append(connection)
        return connection

    def open_connections(self) -> int:
        return sum(1 for c in self.connections if not c.retired)

    async def aclose(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections = []


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's CAs
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context
