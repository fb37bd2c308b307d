"""The HTTP server the HTTP/1.1 fakes (FCM, Twilio, Postmark) run on."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class FakeHTTPServer(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a worker whose threads all connect at once (a
    # batch starting) had connections refused, which a real provider's front end would not
    # do, and the refusals tripped the circuit breaker in the broadcast benchmark.
    request_queue_size = 128
