"""All settings come from the environment, with defaults that work on a developer machine.

Every knob the service has is read here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import environ

from channels import lanes

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        return Path(path).read_text().strip()
    return env.str(name, default=default)


DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"  # noqa: S105 (dev default only)
SECRET_KEY = env.str("SECRET_KEY", default=DEV_SECRET_KEY)
# Earlier keys, still accepted for what they signed (recipient tokens, signed links): rotating
# SECRET_KEY with the old one here logs nobody out; dropping it revokes what it signed.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Behind the proxy (config/nginx.conf.template sets X-Forwarded-Proto itself, never passing a
# client's): trust it for request.is_secure(). Off by default: a client reaching gunicorn
# directly could otherwise claim https. `make run` and docker-compose.yml set it (docs/proxy.md).
NOTIFY_BEHIND_PROXY = env.bool("NOTIFY_BEHIND_PROXY", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if NOTIFY_BEHIND_PROXY else None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from our static files (the docs)
    "django_celery_results",
    "phonenumber_field",
    "anymail",
    "corsheaders",
    "channels.apps.ChannelsConfig",
    "preferences.apps.PreferencesConfig",
    "notifications.apps.NotificationsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # before anything that may answer (CommonMiddleware)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/notifications"
    )
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Emails, phone numbers, push tokens and API keys are masked on every handler
    # (config/logmasking.py; Celery workers get it through config/celery.py).
    "filters": {
        "mask_personal_data": {"()": "config.logmasking.MaskPersonalData"},
        # A forged Host header or an oversized form is the client's fault: a WARNING line.
        "quiet_suspicious_requests": {"()": "config.logsecurity.QuietSuspiciousRequests"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["quiet_suspicious_requests", "mask_personal_data"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
    # Django's own handlers (DEFAULT_LOGGING) would write unmasked: send its records to ours.
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# --- API -------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["notifications.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [
        "notifications.api.auth.HasApiKey",
        "notifications.api.permissions.HasScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["notifications.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["notifications.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "notifications.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "notifications.api.schema.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Notification service API",
    "DESCRIPTION": "Notify a user of an event; the service picks channels, renders and delivers.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Swagger UI from our own static files, not a CDN's "@latest": no third-party script on the
    # admin's origin, and the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"ChannelEnum": "channels.base.Channel.choices"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # 401/403/429 on every operation, 400/413/415 with a body, 404 with path parameters.
        "notifications.api.schema.document_common_errors",
        # The userId rule on {user_id} path parameters.
        "notifications.api.schema.state_path_rules",
    ],
}
API_KEY_CUSTOM_HEADER = None  # the standard "Authorization: Api-Key <key>" header
# Larger bodies are refused with 413 before they are parsed.
NOTIFY_MAX_BODY_BYTES = env.int("NOTIFY_MAX_BODY_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(NOTIFY_MAX_BODY_BYTES, 2_621_440)

# --- API keys: scopes and rate limit (SECURITY.md) -------------------------------------------
# Requests per API key, shared by every API process (Redis), in the `limits` notation:
# "1000/second", "100/second;5000/minute". A key's own limit (admin, or create_api_key
# --rate-limit) replaces it. Empty: no limit. Over it: 429 with Retry-After.
NOTIFY_API_RATE_LIMIT = env.str("NOTIFY_API_RATE_LIMIT", default="1000/second")
# Where the counters live (a `limits` storage URL: redis://, rediss://, redis+sentinel://...);
# empty means the broker when it is Redis, else local Redis db 0 (set after the broker below).
NOTIFY_API_RATE_LIMIT_STORAGE_URL = env.str("NOTIFY_API_RATE_LIMIT_STORAGE_URL", default="")
# Redis unreachable within this: requests go through unlimited for a few seconds (fail open).
NOTIFY_API_RATE_LIMIT_TIMEOUT_SECONDS = env.float(
    "NOTIFY_API_RATE_LIMIT_TIMEOUT_SECONDS", default=0.5
)

# --- The inbox API: recipient tokens, their rate limit, CORS (docs/inbox.md) -----------------
# A token's lifetime when the minting call names none, and the most it may name.
NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS = env.int("NOTIFY_RECIPIENT_TOKEN_TTL_SECONDS", default=3600)
NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS = env.int(
    "NOTIFY_RECIPIENT_TOKEN_MAX_TTL_SECONDS", default=86400
)
# Requests per recipient (all its tokens together), in the `limits` notation; empty: none.
NOTIFY_INBOX_RATE_LIMIT = env.str("NOTIFY_INBOX_RATE_LIMIT", default="20/second;600/minute")
# The web apps' origins that may call the inbox API from a browser ("https://app.example.com");
# none by default. Only /api/inbox answers CORS: the service API is not for browsers.
CORS_ALLOWED_ORIGINS = env.list("NOTIFY_INBOX_CORS_ORIGINS", default=[])
# The inbox demo page (/demo/inbox, notifications/demo.py): hands a token of this recipient to
# whoever opens it, so off unless told (make run turns it on).
NOTIFY_DEMO_PAGE = env.bool("NOTIFY_DEMO_PAGE", default=False)
NOTIFY_DEMO_USER_ID = env.str("NOTIFY_DEMO_USER_ID", default="demo-user")
# The real-time stream (GET /api/inbox/stream, served by the ASGI process; docs/inbox.md).
# Events per recipient kept in Redis for a reconnect's Last-Event-ID, and for how long.
NOTIFY_INBOX_STREAM_REPLAY = env.int("NOTIFY_INBOX_STREAM_REPLAY", default=100)
NOTIFY_INBOX_STREAM_REPLAY_SECONDS = env.int("NOTIFY_INBOX_STREAM_REPLAY_SECONDS", default=3600)
# A comment line this often keeps proxies from closing an idle stream.
NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS = env.float(
    "NOTIFY_INBOX_STREAM_HEARTBEAT_SECONDS", default=15.0
)
CORS_URLS_REGEX = r"^/api/inbox(/.*)?$"
CORS_ALLOW_METHODS = ("GET", "POST", "OPTIONS")
CORS_ALLOW_CREDENTIALS = False  # the token is a header, never a cookie
CORS_PREFLIGHT_MAX_AGE = 3600

# --- One-click unsubscribe (RFC 8058) in every non-critical e-mail (docs/unsubscribe.md) ------
# The service's public base URL, as recipients' mail providers reach it
# ("https://notify.example.com"). Empty: no List-Unsubscribe header (a warning says so).
NOTIFY_PUBLIC_URL = env.str("NOTIFY_PUBLIC_URL", default="").rstrip("/")
# Also a mailto: unsubscribe address in the header, for clients without HTTPS support.
NOTIFY_UNSUBSCRIBE_MAILTO = env.str("NOTIFY_UNSUBSCRIBE_MAILTO", default="")
# How long a link in an e-mail keeps working.
NOTIFY_UNSUBSCRIBE_LINK_DAYS = env.int("NOTIFY_UNSUBSCRIBE_LINK_DAYS", default=90)
# How long a preference centre link works (preferences/centre.py).
NOTIFY_PREFERENCE_LINK_DAYS = env.int("NOTIFY_PREFERENCE_LINK_DAYS", default=30)

# --- Delivery --------------------------------------------------------------------------------
# Which provider sends each channel; an empty value means the channel is not configured and
# its deliveries are recorded as skipped with reason "channel_not_configured".
NOTIFY_PROVIDERS = {
    "email": env.str("NOTIFY_PROVIDER_EMAIL", default="channels.providers.email.EmailProvider"),
    "inapp": env.str("NOTIFY_PROVIDER_INAPP", default="channels.providers.inapp.InAppProvider"),
    "push": env.str("NOTIFY_PROVIDER_PUSH", default=""),
    "sms": env.str("NOTIFY_PROVIDER_SMS", default=""),
}
# The push channel sends each device through its platform's sender; a platform left empty is
# not configured and its devices are left out (a recipient with no other device: "no_device").
NOTIFY_PUSH_SENDERS = {
    "apns": env.str("NOTIFY_PUSH_APNS", default="channels.providers.apns.APNsSender"),
    "fcm": env.str("NOTIFY_PUSH_FCM", default="channels.providers.fcm.FCMSender"),
}
# Active devices one recipient may have: each is a provider call per push (the fan-out is
# sequential), so without a cap one recipient's 1,500 devices held a push worker for a minute.
# An app that registers a new token on every launch reaches any cap: the device registered
# longest ago is then deactivated ("replaced: more than N devices"), not the new one refused.
NOTIFY_MAX_DEVICES_PER_RECIPIENT = env.int("NOTIFY_MAX_DEVICES_PER_RECIPIENT", default=20)
NOTIFY_MAX_RETRIES = env.int("NOTIFY_MAX_RETRIES", default=8)
NOTIFY_RETRY_BACKOFF = env.int("NOTIFY_RETRY_BACKOFF", default=2)
NOTIFY_RETRY_BACKOFF_MAX = env.int("NOTIFY_RETRY_BACKOFF_MAX", default=600)
# A delivery queued or sending for longer than this (plus any retry wait) is re-enqueued
# by the sweep; it must exceed the longest provider call.
NOTIFY_LEASE_SECONDS = env.int("NOTIFY_LEASE_SECONDS", default=300)
NOTIFY_SWEEP_INTERVAL_SECONDS = env.int("NOTIFY_SWEEP_INTERVAL_SECONDS", default=60)
NOTIFY_SWEEP_BATCH = env.int("NOTIFY_SWEEP_BATCH", default=1000)
# Broker loss (docs/reliability.md): this often the broker watch checks the canary it keeps in
# the broker (a Redis key, a RabbitMQ queue holding one message). When the canary vanished or
# Redis restarted, the queued deliveries whose messages may be gone are re-enqueued at once
# instead of waiting out their lease (5 min; an hour on the bulk lanes): recovery within
# ~2 checks, the target being 30 s for an OTP.
NOTIFY_BROKER_WATCH_SECONDS = env.float("NOTIFY_BROKER_WATCH_SECONDS", default=5.0)
# Redis restarted from its own persistence (AOF, RDB): what it lost was written after the
# last canary it still holds. Rows queued this long before that are re-enqueued as well: the
# publish follows the commit, and queued_at is the transaction's start (and another host's
# clock, hence NTP).
NOTIFY_BROKER_LOSS_MARGIN_SECONDS = env.float("NOTIFY_BROKER_LOSS_MARGIN_SECONDS", default=60.0)
# One watch run re-enqueues pages of NOTIFY_SWEEP_BATCH rows for at most this long, then hands
# the rest to the next run (chained at once), so the maintenance worker is never held long.
NOTIFY_BROKER_RECOVERY_TIME_BUDGET_SECONDS = env.float(
    "NOTIFY_BROKER_RECOVERY_TIME_BUDGET_SECONDS", default=10.0
)
# Events and templates are cached per process this long on the accept path.
NOTIFY_CATALOG_CACHE_SECONDS = env.float("NOTIFY_CATALOG_CACHE_SECONDS", default=5.0)
NOTIFY_PROVIDER_TIMEOUT_SECONDS = env.float("NOTIFY_PROVIDER_TIMEOUT_SECONDS", default=10.0)
# Keep-alive connections an HTTP provider client (Twilio's) keeps per worker process: at least
# the sends a process has in flight (NOTIFY_DELIVERY_IN_FLIGHT).
NOTIFY_PROVIDER_HTTP_POOL_SIZE = env.int("NOTIFY_PROVIDER_HTTP_POOL_SIZE", default=100)

# --- Broadcasts: fan-out and batch delivery (docs/broadcasts.md) -----------------------------
# Recipients per fan-out page: one task and one transaction each, a constant number of queries.
NOTIFY_FANOUT_PAGE = env.int("NOTIFY_FANOUT_PAGE", default=1000)
# Pages of one broadcast written in parallel, each chain over its own range of recipient ids
# (fewer when the audience spans fewer pages); give the maintenance worker as many processes.
# 1 on a small machine: there parallel chains take the cores the deliveries need and slow the
# drain more than they speed the fan-out (docs/broadcasts.md has the figures).
NOTIFY_FANOUT_CHAINS = env.int("NOTIFY_FANOUT_CHAINS", default=1)
# A worker serving a bulk lane lowers its CPU priority by this (0: not at all), so that a
# drain sharing a host yields to transactional sends, the fan-out and PostgreSQL
# (config/worker_priority.py).
NOTIFY_BULK_WORKER_NICE = env.int("NOTIFY_BULK_WORKER_NICE", default=10)
# Lease of a broadcast's queued deliveries. A bulk lane is expected to hold a backlog (a
# broadcast drains at the providers' pace), so the sweep must not take a delivery still
# waiting in it for a lost one; a lost one is re-enqueued this much later.
NOTIFY_FANOUT_LEASE_SECONDS = env.int("NOTIFY_FANOUT_LEASE_SECONDS", default=3600)
# How often fan-outs whose task chain broke (broker down between two pages) are restarted.
NOTIFY_FANOUT_RESUME_SECONDS = env.int("NOTIFY_FANOUT_RESUME_SECONDS", default=300)
# Body limit of the bulk endpoints (10,000 userIds per broadcast, 1,000 per topic change).
NOTIFY_FANOUT_MAX_BODY_BYTES = env.int("NOTIFY_FANOUT_MAX_BODY_BYTES", default=1024 * 1024)
# Cancelling skips this many queued deliveries in the request; a maintenance task skips the
# rest of a larger broadcast, this many per transaction, handing over after the time budget.
NOTIFY_BROADCAST_CANCEL_CHUNK = env.int("NOTIFY_BROADCAST_CANCEL_CHUNK", default=10_000)
NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS = env.float(
    "NOTIFY_BROADCAST_CANCEL_TIME_BUDGET_SECONDS", default=120.0
)
# Progress polls share one count of a broadcast's deliveries at least this long (longer for a
# broadcast whose count takes long: twenty times the count's own time).
NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS = env.float(
    "NOTIFY_BROADCAST_PROGRESS_MIN_AGE_SECONDS", default=2.0
)
NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR = env.float(
    "NOTIFY_BROADCAST_PROGRESS_RECOUNT_FACTOR", default=20.0
)
# Deliveries per batch task on the bulk lanes: one message, one claim, one load per batch.
NOTIFY_DELIVERY_BATCH = env.int("NOTIFY_DELIVERY_BATCH", default=100)
# Provider calls a delivery task has in flight at once on its process's I/O loop, per channel
# (a push to one device, an SMS, an ESP batch call). The engine records each round of calls
# before starting the next, so this also bounds how many sends a worker killed mid-batch
# leaves to be sent again (the crash window, docs/reliability.md). In-app is one INSERT.
NOTIFY_DELIVERY_IN_FLIGHT = {
    "push": env.int("NOTIFY_DELIVERY_IN_FLIGHT_PUSH", default=100),
    "email": env.int("NOTIFY_DELIVERY_IN_FLIGHT_EMAIL", default=4),
    "sms": env.int("NOTIFY_DELIVERY_IN_FLIGHT_SMS", default=100),
    "inapp": 1,
}
# Email deliveries of a batch with the same content go to the ESP in one batch call of at most
# this many messages (channels/providers/email_batch.py; Postmark takes up to 500), for the
# ESPs listed:
# only those known to split a multi-recipient message per address. A worker killed between
# the ESP's acceptance and our commit sends this many again (the crash window). 1 turns it off.
NOTIFY_EMAIL_BATCH_SIZE = env.int("NOTIFY_EMAIL_BATCH_SIZE", default=50)
NOTIFY_EMAIL_BATCH_ESPS = env.list("NOTIFY_EMAIL_BATCH_ESPS", default=["postmark"])

# --- Retention of the notification log (docs/sizing.md) ----------------------------------------
# Notifications older than this, with their deliveries and dead letters, are deleted by a beat
# task in batches; 0 keeps them forever. Inbox messages are kept (the inbox is the recipient's).
NOTIFY_RETENTION_DAYS = env.int("NOTIFY_RETENTION_DAYS", default=30)
# Notifications per batch, one transaction each: measured, 1,000 deletes as many per second as
# 5,000 or 10,000 while holding its row locks at most ~0.2 s instead of ~0.8 s or ~1.4 s.
NOTIFY_RETENTION_BATCH = env.int("NOTIFY_RETENTION_BATCH", default=1000)
# Every run ends by itself: when nothing expired is left, or after the time budget (the batch
# under way finishes). 180 s every 300 s deletes up to ~4,200 notifications/s at the measured
# ~7,000/s, 1.5x the 2,778/s that expire at 10M/hour sustained; a budget below the interval
# keeps runs from piling up.
NOTIFY_RETENTION_INTERVAL_SECONDS = env.int("NOTIFY_RETENTION_INTERVAL_SECONDS", default=300)
NOTIFY_RETENTION_TIME_BUDGET_SECONDS = env.float(
    "NOTIFY_RETENTION_TIME_BUDGET_SECONDS", default=180.0
)

# --- Push: APNs (token auth, HTTP/2) ---------------------------------------------------------
APNS_KEY_ID = env.str("APNS_KEY_ID", default="")
APNS_TEAM_ID = env.str("APNS_TEAM_ID", default="")
APNS_TOPIC = env.str("APNS_TOPIC", default="")  # the app's bundle id
APNS_PRIVATE_KEY = env_secret("APNS_PRIVATE_KEY")  # the .p8 key's PEM text (or *_FILE)
APNS_ENDPOINT = env.str("APNS_ENDPOINT", default="https://api.push.apple.com")
# Extra CA bundle to trust (the local fake's test CA); empty means the system's CAs.
APNS_CA_FILE = env.str("APNS_CA_FILE", default="")
# HTTP/2 connections to APNs per worker process: each carries up to the server's concurrent
# streams (Apple allows 1,000), so a second one is only opened when the first is full.
APNS_MAX_CONNECTIONS = env.int("APNS_MAX_CONNECTIONS", default=2)

# --- Push: FCM HTTP v1 (service account) ----------------------------------------------------
FCM_CREDENTIALS_FILE = env.str("FCM_CREDENTIALS_FILE", default="")  # service-account JSON
FCM_PROJECT_ID = env.str("FCM_PROJECT_ID", default="")  # defaults to the credentials' one
FCM_ENDPOINT = env.str("FCM_ENDPOINT", default="https://fcm.googleapis.com")

# --- SMS: Twilio ------------------------------------------------------------------------------
TWILIO_ACCOUNT_SID = env.str("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env_secret("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env.str("TWILIO_FROM_NUMBER", default="")
TWILIO_MESSAGING_SERVICE_SID = env.str("TWILIO_MESSAGING_SERVICE_SID", default="")
# Where Twilio reaches our status callback, e.g. https://notify.example.com/webhooks/twilio/status
TWILIO_STATUS_CALLBACK_URL = env.str("TWILIO_STATUS_CALLBACK_URL", default="")
# The inbound-message webhook URL set on the Twilio number (signatures are over it), e.g.
# https://notify.example.com/webhooks/twilio/inbound; empty means the URL as this server sees it.
TWILIO_INBOUND_URL = env.str("TWILIO_INBOUND_URL", default="")
# Empty means Twilio's own API; the local fake is "http://127.0.0.1:<port>".
TWILIO_API_BASE = env.str("TWILIO_API_BASE", default="")

# --- Email (django-anymail or any Django email backend) --------------------------------------
# EMAIL_URL picks a plain backend (consolemail://, smtp://host:port, smtp+tls://...);
# EMAIL_BACKEND overrides it, e.g. anymail.backends.postmark.EmailBackend.
# An empty EMAIL_URL (docker compose passes unset variables as "") means the default too.
vars().update(env.email_url_config(env.str("EMAIL_URL", default="") or "consolemail://"))
if env.str("EMAIL_BACKEND", default=""):
    EMAIL_BACKEND = env.str("EMAIL_BACKEND")
EMAIL_TIMEOUT = int(NOTIFY_PROVIDER_TIMEOUT_SECONDS)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Notifications <notify@localhost>")
ANYMAIL = {
    key.removeprefix("ANYMAIL_"): value
    for key, value in env.ENVIRON.items()
    if key.startswith("ANYMAIL_")
}

# --- Celery ----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# The Redis the guard and the API rate limit keep their state in when not told otherwise: the
# broker's, when the broker is Redis. A RabbitMQ URL is no Redis URL (amqp:// in a Redis
# client is an error at the first request or send), so then a local Redis.
REDIS_URL_DEFAULT = (
    CELERY_BROKER_URL
    if CELERY_BROKER_URL.partition("://")[0].lower() in {"redis", "rediss"}
    else "redis://127.0.0.1:6379/0"
)
NOTIFY_API_RATE_LIMIT_STORAGE_URL = NOTIFY_API_RATE_LIMIT_STORAGE_URL or REDIS_URL_DEFAULT
# Where inbox events are published and kept for replay (the ASGI stream process reads them).
NOTIFY_INBOX_STREAM_REDIS_URL = (
    env.str("NOTIFY_INBOX_STREAM_REDIS_URL", default="") or REDIS_URL_DEFAULT
)
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Delivery tasks record their own outcome in the Delivery row; a result row per task would
# double the writes. Failures are still stored (django-celery-results) for inspection.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# With acks_late a worker holds multiplier x concurrency messages; a transactional one that
# arrives during a broadcast waits behind all of them, whatever the queue order. 1 instead of
# 4 cut in-app p50 from ~31 to ~10 ms (2 bulk tasks ahead instead of 8; with batches of 100,
# p50 0.6 s -> 0.15 s) at no measurable bulk throughput (bench/lanes.py, docs/lanes.md).
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing happens after commit inside a request; do not hang the request for long when
# the broker is down: the sweep re-enqueues what could not be published.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
# The broker's own options (Redis or RabbitMQ) follow the task routes, at the end.
CELERY_TASK_DEFAULT_QUEUE = lanes.MAINTENANCE_QUEUE
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-deliveries": {
        "task": lanes.SWEEP_TASK,
        "schedule": float(NOTIFY_SWEEP_INTERVAL_SECONDS),
    },
    "watch-broker": {
        "task": lanes.WATCH_BROKER_TASK,
        "schedule": NOTIFY_BROKER_WATCH_SECONDS,
        # A check missed while the maintenance worker was busy or down is not worth running
        # late: the next one looks at the same broker.
        "options": {"expires": NOTIFY_BROKER_WATCH_SECONDS},
    },
    "resume-broadcast-fanouts": {
        "task": lanes.RESUME_FANOUTS_TASK,
        "schedule": float(NOTIFY_FANOUT_RESUME_SECONDS),
        "options": {"expires": float(NOTIFY_FANOUT_RESUME_SECONDS)},
    },
    "purge-expired-notifications": {
        "task": lanes.PURGE_TASK,
        "schedule": float(NOTIFY_RETENTION_INTERVAL_SECONDS),
        # A run missed while the maintenance worker was down is not worth queueing: the next
        # one deletes the same rows.
        "options": {"expires": float(NOTIFY_RETENTION_INTERVAL_SECONDS)},
    },
}
# Celery closes the DB connection around every task unless told to reuse it (celery#9824).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Every task's queue, from the one table of channels, tasks and queues (channels/lanes.py).
CELERY_TASK_ROUTES = lanes.task_routes()

# --- Provider rate limits and circuit breaker (docs/reliability.md) -------------------------
# Calls per period and provider, shared by every worker (Redis, moving window): "name=limit"
# pairs, a limit in the `limits` library's notation ("30/second", "500/second;20000/minute").
# Names are the senders' and providers': apns, fcm, twilio, and the email ESP (postmark…).
NOTIFY_RATE_LIMITS = env.dict(
    "NOTIFY_RATE_LIMITS",
    default={"apns": "500/second", "fcm": "500/second", "twilio": "30/second",
             "postmark": "100/second"},
)  # fmt: skip
# The bulk lane may use this share of each limit; the rest is kept for transactional traffic.
NOTIFY_RATE_LIMIT_BULK_SHARE = env.float("NOTIFY_RATE_LIMIT_BULK_SHARE", default=0.8)
# A call over the limit waits this long at most, then its delivery is deferred (not failed).
NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS = env.float("NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS", default=10.0)
# This many transient failures of one provider in a row (within the window) open its circuit:
# no call to it for the cool-down, deliveries wait in `queued` without spending attempts.
NOTIFY_CIRCUIT_BREAKER = env.bool("NOTIFY_CIRCUIT_BREAKER", default=True)
NOTIFY_CIRCUIT_FAILURES = env.int("NOTIFY_CIRCUIT_FAILURES", default=5)
NOTIFY_CIRCUIT_WINDOW_SECONDS = env.float("NOTIFY_CIRCUIT_WINDOW_SECONDS", default=60.0)
NOTIFY_CIRCUIT_COOLDOWN_SECONDS = env.float("NOTIFY_CIRCUIT_COOLDOWN_SECONDS", default=30.0)
# A provider that refused our configuration at send time (a sender, a key, an endpoint) is
# paused this long between probes: its deliveries wait in `queued` instead of being
# dead-lettered, and go out once a probe passes (the setting fixed, the workers restarted).
# Longer than the outage cool-down: a wrong setting takes an operator, not a few seconds.
NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS = env.float(
    "NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS", default=60.0
)
# A device token rejection that can equally mean our settings are wrong (APNs BadDeviceToken:
# sandbox vs production endpoint; DeviceTokenNotForTopic: APNS_TOPIC; FCM SENDER_ID_MISMATCH:
# the Firebase project) retires the device, but this many in a row from one provider, with no
# successful send in between, pause that provider as misconfigured instead: retiring is
# irreversible, and a wrong setting would otherwise retire every device. Up to this minus one
# devices can be retired before the pause (docs/reliability.md).
NOTIFY_PUSH_SUSPECT_REJECTIONS = env.int("NOTIFY_PUSH_SUSPECT_REJECTIONS", default=10)
# Where limits and circuits live: the broker's Redis when the broker is Redis.
NOTIFY_GUARD_REDIS_URL = env.str("NOTIFY_GUARD_REDIS_URL", default="") or REDIS_URL_DEFAULT
# After that Redis fails once, providers are called without limits or circuits for this long
# before it is asked again (channels/gate/guard_redis.py), instead of every send waiting on it.
NOTIFY_GUARD_REDIS_RETRY_SECONDS = env.float("NOTIFY_GUARD_REDIS_RETRY_SECONDS", default=5.0)

# --- The broker: Redis or RabbitMQ (docs/scaling.md) -----------------------------------------
# CELERY_BROKER_URL picks it: redis://… or amqp://user:password@host:5672/vhost. Each transport
# gets only the options it understands.
_BROKER_SCHEME = CELERY_BROKER_URL.partition("://")[0].lower()
BROKER_IS_REDIS = _BROKER_SCHEME in {"redis", "rediss", "redis+socket", "sentinel"}
BROKER_IS_AMQP = _BROKER_SCHEME in {"amqp", "amqps", "pyamqp"}
# Every queue a task is routed to: each channel's transactional lane (<channel>) and bulk lane
# (<channel>.bulk), and maintenance.
NOTIFY_QUEUES = lanes.all_queues()
# RabbitMQ only: declare the queues as quorum queues (replicated, durable). A queue's type is
# fixed when it is first declared: switching an existing vhost means deleting its queues.
RABBITMQ_QUORUM_QUEUES = BROKER_IS_AMQP and env.bool("CELERY_RABBITMQ_QUORUM", default=False)

if BROKER_IS_REDIS:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A worker consuming "email,email.bulk" (that order) always polls the transactional
        # queue first. kombu's default round_robin alternates once both hold messages: a burst
        # of 100 OTPs let 107 bulk tasks through instead of 8, and 100 batches (16 s instead of
        # 1.5) when bulk is batched (bench/lanes.py, docs/lanes.md); a steady trickle does not
        # show it. RabbitMQ has no such option: there the transactional-only worker per
        # channel (docs/lanes.md) is what serves transactional first (docs/scaling.md).
        "queue_order_strategy": env.str("CELERY_QUEUE_ORDER_STRATEGY", default="priority"),
        # An unacknowledged message (acks_late; and a countdown/ETA message, which the worker
        # holds unacknowledged until due) is handed to another worker after this long. Set
        # above the longest countdown (retry backoff, circuit cool-down), the sweep's lease
        # and the longest task (a batch waiting out rate limits and timeouts), so a message is
        # redelivered only when its worker died. An early copy would be harmless anyway: the
        # delivery's claim lets one copy send (docs/reliability.md).
        "visibility_timeout": env.int(
            "CELERY_VISIBILITY_TIMEOUT",
            default=int(
                max(
                    3600,
                    NOTIFY_RETRY_BACKOFF_MAX * 2,
                    NOTIFY_CIRCUIT_COOLDOWN_SECONDS * 2,
                    NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS * 2,
                    NOTIFY_LEASE_SECONDS * 2,
                    NOTIFY_LEASE_SECONDS
                    + NOTIFY_DELIVERY_BATCH
                    * (NOTIFY_PROVIDER_TIMEOUT_SECONDS + NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS),
                )
            ),
        ),
    }
elif BROKER_IS_AMQP:
    from kombu import Exchange, Queue

    # One topic exchange, each queue bound by its own name: routes like the per-queue direct
    # exchanges Celery would create, and is what RabbitMQ's native delayed delivery (retries'
    # countdowns on quorum queues) can forward to; it skips direct exchanges.
    _EXCHANGE = Exchange("notifications", type="topic")
    _QUEUE_ARGUMENTS = {"x-queue-type": "quorum"} if RABBITMQ_QUORUM_QUEUES else None
    CELERY_TASK_QUEUES = [
        Queue(name, _EXCHANGE, routing_key=name, queue_arguments=_QUEUE_ARGUMENTS)
        for name in NOTIFY_QUEUES
    ]
    CELERY_TASK_DEFAULT_EXCHANGE = _EXCHANGE.name
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = _EXCHANGE.type
    CELERY_TASK_DEFAULT_ROUTING_KEY = CELERY_TASK_DEFAULT_QUEUE
    # A queue named on the command line (-Q) but not listed above gets the same treatment.
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum" if RABBITMQ_QUORUM_QUEUES else "classic"
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = _EXCHANGE.type
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Publisher confirms: a publish returns once RabbitMQ has the message (on a quorum
        # queue: on a majority of its replicas), so "accepted" means "queued" (docs/scaling.md
        # has the cost).
        "confirm_publish": env.bool("CELERY_BROKER_CONFIRM_PUBLISH", default=True),
    }
    # Quorum queues refuse a global (per-channel) prefetch: the worker then sets it per
    # consumer, statically, and schedules countdowns (retries) through RabbitMQ's native
    # delayed delivery instead of holding them unacked. Celery detects it from the queues.
    CELERY_WORKER_DETECT_QUORUM_QUEUES = True
