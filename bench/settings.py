"""The service's own settings plus one baseline route (see bench/urls.py).

Everything else (middleware, authentication, DEBUG, connection reuse) stays as in production
settings, so the baseline and the real endpoint run on the same stack.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
