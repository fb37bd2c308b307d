"""Run one of devtools' provider fakes with a bounded in-memory request list.

    python -m bench.bounded_fake apns|fcm|twilio|postmark [the fake's own arguments]

The fakes keep every request they served in ``requests`` for tests to inspect; a broadcast to
1,000,000 recipients would keep millions of them (several GB per fake). The benchmark reads
the JSONL log instead, so here the list keeps only the last ``KEEP``; everything else, from the
command line to the answers, is the fake's own ``main()``.
"""

from __future__ import annotations

import collections
import importlib
import sys
from typing import Any

KEEP = 1000
CLASSES = {
    "apns": "FakeAPNs",
    "fcm": "FakeFCM",
    "twilio": "FakeTwilioServer",
    "postmark": "FakePostmark",
}


def main() -> None:
    name = sys.argv[1]
    module = importlib.import_module(f"devtools.fakes.{name}")
    cls = getattr(module, CLASSES[name])
    original_init = cls.__init__

    def bounded_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.requests = collections.deque(maxlen=KEEP)

    cls.__init__ = bounded_init
    sys.argv = [f"devtools.fakes.{name}", *sys.argv[2:]]
    module.main()


if __name__ == "__main__":
    main()
