"""What every provider fake measures about the traffic it gets: how many provider API calls,
and the most that arrived within any one second (a sliding window, not calendar seconds), so
a test can check our rate limits from the provider's side. Served at ``GET /_fake/stats``
as ``{"requests": n, "maxPerSecond": n}``."""

from __future__ import annotations

import threading
import time
from collections import deque

STATS_PATH = "/_fake/stats"


class RequestRate:
    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.requests = 0
        self.max_per_second = 0
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()

    def count(self) -> None:
        """One provider API call arrived now."""
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            self._recent.append(now)
            while self._recent[0] <= now - self.window:
                self._recent.popleft()
            self.max_per_second = max(self.max_per_second, len(self._recent))

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "maxPerSecond": self.max_per_second}

    def reset(self) -> None:
        with self._lock:
            self.requests = self.max_per_second = 0
            self._recent.clear()
