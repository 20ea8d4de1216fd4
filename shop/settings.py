"""Settings for the shop. Every value that differs between machines comes from the environment.

The environment is read here and nowhere else; code asks ``settings.X``.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from jobs.conf import DEFAULTS as jobs_defaults
from jobs.conf import parse_lag_slo
from shop.logging import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="").strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"

ALLOWED_HOSTS = [
    h for h in env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else []) if h
]
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "jobs",
    "shop",
    "orders",
]

MIDDLEWARE = [
    "shop.middleware.RequestIdMiddleware",
    "shop.health.HealthProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "shop.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "shop.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

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
                "shop.context_processors.cart",
            ],
        },
    },
]

# Database: SQLite in var/ by default, PostgreSQL in production.
DATABASES = {
    "default": env.db_url_config(env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
}
# Seconds a web process keeps its connection between requests (both databases: a SQLite connection
# opened per request costs its file, its writer lock file and three PRAGMAs, some 0.5 ms).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["ENGINE"] = "shop.backends.sqlite3"  # fair turns at the write lock (see there)
    # WAL lets readers and one writer work side by side; IMMEDIATE transactions take the write lock
    # up front, so a transaction never fails half-way with "database is locked" when it upgrades from
    # reading to writing; the busy timeout makes waiting writers queue instead of erroring.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env.int("SQLITE_BUSY_TIMEOUT", default=30),
        "transaction_mode": "IMMEDIATE",
        "init_command": (
            "PRAGMA journal_mode=WAL;"
            "PRAGMA synchronous=NORMAL;"
            f"PRAGMA busy_timeout={env.int('SQLITE_BUSY_TIMEOUT', default=30) * 1000};"
        ),
    }
else:
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # A host cut off from the database must get an error within seconds, not hang until TCP gives up
    # (a connect to a black-holed address hung 133 s; a query on an open connection, as long as the
    # cut). libpq: connect_timeout bounds a connect; keepalives find an idle connection's peer gone;
    # tcp_user_timeout (milliseconds) drops a connection whose sent data stays unacknowledged.
    _peer_gone = dict(
        keepalives_idle=env.int("DB_KEEPALIVES_IDLE", default=10),
        keepalives_interval=env.int("DB_KEEPALIVES_INTERVAL", default=3),
        keepalives_count=env.int("DB_KEEPALIVES_COUNT", default=3),
        tcp_user_timeout=int(env.float("DB_TCP_USER_TIMEOUT", default=10.0) * 1000),
    )
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        connect_timeout=env.int("DB_CONNECT_TIMEOUT", default=5), keepalives=1, **_peer_gone
    )

# What sits between Django and PostgreSQL: "" (nothing) or "pgbouncer" (PgBouncer in transaction
# pooling: each transaction, or each statement in autocommit, may run on another server connection,
# so nothing may outlive a transaction on the server).
DATABASE_POOLER = env.str("DATABASE_POOLER", default="").strip().lower()
if DATABASE_POOLER not in ("", "pgbouncer"):
    raise ImproperlyConfigured(f"DATABASE_POOLER must be empty or 'pgbouncer', not {DATABASE_POOLER!r}.")
if DATABASE_POOLER == "pgbouncer":
    if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise ImproperlyConfigured("DATABASE_POOLER=pgbouncer needs a postgres:// DATABASE_URL.")
    # QuerySet.iterator() would read through a server-side cursor (DECLARE ... WITH HOLD) that lives
    # on one server connection; the next FETCH may reach another ("cursor does not exist").
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    # Prepared statements live on one server connection too: psycopg prepares none, and Django binds
    # parameters on the client (its default, named here so that nobody turns it on).
    DATABASES["default"].setdefault("OPTIONS", {}).update(prepare_threshold=None, server_side_binding=False)
elif DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # The server must learn as soon that its client is gone. A host cut off inside a transaction leaves
    # its session on the server idle, holding its row locks (an order, the invoice number sequence), and
    # an idle session sends nothing, so without keepalives the server never noticed: the workers that
    # took the host's jobs over waited on those locks until the jobs timed out, again at each retry
    # (tests/hosts: a lock still held 60 s into a cut; with these, released 2.9 s into it at 2 s idle
    # and 2 probes 1 s apart). The same numbers, for the server's end (its per-session tcp_* settings).
    # Behind PgBouncer the server's peer is PgBouncer, which passes no startup options and has
    # keepalives of its own.
    _server = " ".join(f"-c tcp_{name.removeprefix('tcp_')}={value}" for name, value in _peer_gone.items())
    _options = DATABASES["default"]["OPTIONS"]
    _options["options"] = f"{_options.get('options', '')} {_server}".strip()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="Europe/Berlin")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(VAR_DIR / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = env.str("MEDIA_ROOT", default=str(VAR_DIR / "media"))

# Email: EMAIL_URL such as smtp://user:pass@host:587, filemail:///path, consolemail://, memorymail://
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Demo Shop <shop@example.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Security: secure by default when DEBUG is off.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# Shop
SHOP_NAME = env.str("SHOP_NAME", default="Demo Shop")
SHOP_CURRENCY = env.str("SHOP_CURRENCY", default="EUR")
SHOP_BASE_URL = env.str("SHOP_BASE_URL", default="http://127.0.0.1:8000")
PAYMENT_GATEWAY = env.str("PAYMENT_GATEWAY", default="orders.gateways.FakeGateway")
# Stripe, for PAYMENT_GATEWAY=orders.gateways.StripeGateway (tests point the API base at a local server).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
# Signs the provider's webhooks (whsec_...); the fake gateway signs its own with it too, or with a
# secret derived from SECRET_KEY when empty.
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
# "immediately" (charge at checkout) or "on_fulfilment" (authorize at checkout, capture before shipping).
PAYMENT_CAPTURE = env.str("PAYMENT_CAPTURE", default="immediately")
if PAYMENT_CAPTURE not in ("immediately", "on_fulfilment"):
    raise ImproperlyConfigured("PAYMENT_CAPTURE must be 'immediately' or 'on_fulfilment'.")
# Seconds an order waiting for 3-D Secure or a processing payment keeps its stock before it expires.
# When reconcile_pending_payments settles orders left pending by a crash (cron; every minute, so that
# stock and money never hang for long).
RECONCILE_SCHEDULE = env.str("RECONCILE_SCHEDULE", default="* * * * *")
PAYMENT_RESERVATION_TTL = env.int("PAYMENT_RESERVATION_TTL", default=15 * 60)
# Seconds until the fake gateway's bank settles a tok_processing payment (by a signed webhook).
FAKE_GATEWAY_SETTLE_AFTER = env.float("FAKE_GATEWAY_SETTLE_AFTER", default=5.0)
# Who is emailed when a customer's bank opens a payment dispute (default: MANAGERS).
PAYMENT_ALERT_EMAILS = env.list("PAYMENT_ALERT_EMAILS", default=[])
# Seconds a request may hold an idempotency key (an API Idempotency-Key or a checkout form's token)
# without a sign of life: a retry of a request that died (its process or its database connection) takes
# the key over after this long and resumes where the request stopped. A request still running past it is
# fenced: what it has not yet recorded is left to the retry.
IDEMPOTENCY_LEASE = env.float("IDEMPOTENCY_LEASE", default=5.0)
# Requests per client to POST /api/orders, counted in the database across all web processes
# (shop/throttle.py): "<n>/<s|m|h|d>", empty for no limit.
API_RATE_LIMIT = env.str("API_RATE_LIMIT", default="60/m")
# The client is REMOTE_ADDR; with TRUSTED_PROXY on, the first X-Forwarded-For entry, which the proxy
# in front must set (overwrite), never pass through from the client.
TRUSTED_PROXY = env.bool("TRUSTED_PROXY", default=False)

# Logs: LOG_FORMAT=text (default) or json (one object per line with the request's or job's context).
LOG_FORMAT = env.str("LOG_FORMAT", default="text").strip().lower()
LOGGING = logging_config(LOG_FORMAT, env.str("LOG_LEVEL", default="INFO"))

# Health probes (shop/health.py): seconds /readyz waits for the database; a header whose presence lets a
# probe from elsewhere than the loopback skip the HTTPS redirect and host check (empty: none).
HEALTH_DB_TIMEOUT = env.float("HEALTH_DB_TIMEOUT", default=2.0)
HEALTH_PROBE_HEADER = env.str("HEALTH_PROBE_HEADER", default="").strip()
if HEALTH_DB_TIMEOUT <= 0:
    raise ImproperlyConfigured(
        f"HEALTH_DB_TIMEOUT must be a positive number of seconds, not {HEALTH_DB_TIMEOUT:g}."
    )
if HEALTH_PROBE_HEADER and not HEALTH_PROBE_HEADER.replace("-", "").isalnum():
    raise ImproperlyConfigured(
        f"HEALTH_PROBE_HEADER must be a header name (letters, digits, dashes), not {HEALTH_PROBE_HEADER!r}."
    )

# Tracing (shop/tracing.py): on when an OTLP endpoint is set; the exporter reads the other standard
# OTEL_EXPORTER_OTLP_* variables itself. OTEL_TRACES_FILE: also write spans as JSON lines to a file.
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
OTEL_TRACES_FILE = env.str("OTEL_TRACES_FILE", default="")
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="shop")
# Which traces are kept, unless the standard OTEL_TRACES_SAMPLER chooses: every new trace up to
# TRACE_SAMPLE_PER_SECOND a second (per process), then TRACE_SAMPLE_RATIO of the rest, no more than
# TRACE_SAMPLE_MAX_PER_SECOND a second in all (a burst of jobs costs a bounded export); a job's run
# follows the decision taken for the request (or job) that enqueued it, so a trace is kept whole.
TRACE_SAMPLE_PER_SECOND = env.float("TRACE_SAMPLE_PER_SECOND", default=10.0)
TRACE_SAMPLE_RATIO = env.float("TRACE_SAMPLE_RATIO", default=0.1)
TRACE_SAMPLE_MAX_PER_SECOND = env.float("TRACE_SAMPLE_MAX_PER_SECOND", default=100.0)
if TRACE_SAMPLE_PER_SECOND < 0:
    raise ImproperlyConfigured(
        f"TRACE_SAMPLE_PER_SECOND must be zero or more, not {TRACE_SAMPLE_PER_SECOND:g}."
    )
if not 0 <= TRACE_SAMPLE_RATIO <= 1:
    raise ImproperlyConfigured(f"TRACE_SAMPLE_RATIO must be between 0 and 1, not {TRACE_SAMPLE_RATIO:g}.")
if TRACE_SAMPLE_MAX_PER_SECOND < TRACE_SAMPLE_PER_SECOND:
    raise ImproperlyConfigured(
        f"TRACE_SAMPLE_MAX_PER_SECOND ({TRACE_SAMPLE_MAX_PER_SECOND:g}) must be at least "
        f"TRACE_SAMPLE_PER_SECOND ({TRACE_SAMPLE_PER_SECOND:g})."
    )

# Error reports (shop/sentry.py): on when SENTRY_DSN is set.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="production")
SENTRY_RELEASE = env.str("SENTRY_RELEASE", default="")

# Job queue: every JOBS_* setting can be set from the environment; what each does and its default are
# written once, in jobs/conf.py.
_jobs_casts = {bool: env.bool, int: env.int, float: env.float, str: env.str}
for _name, _default in jobs_defaults.items():
    if _name == "JOBS_PREFETCH":  # None (adaptive) or a number of jobs
        globals()[_name] = env.int(_name, default=None)
    else:
        globals()[_name] = _jobs_casts[type(_default)](_name, default=_default)
# LISTEN holds its server connection for good, which transaction pooling cannot give: workers poll.
JOBS_LISTEN_NOTIFY = env.bool("JOBS_LISTEN_NOTIFY", default=not DATABASE_POOLER)
if JOBS_LISTEN_NOTIFY and DATABASE_POOLER:
    raise ImproperlyConfigured("JOBS_LISTEN_NOTIFY cannot work through PgBouncer's transaction pooling.")
if JOBS_PREFETCH is not None and JOBS_PREFETCH < 0:  # noqa: F821 (set above)
    raise ImproperlyConfigured(f"JOBS_PREFETCH must be zero or more, not {JOBS_PREFETCH}.")  # noqa: F821
try:
    parse_lag_slo(JOBS_LAG_SLO)  # noqa: F821 (set above)
except ValueError as _exc:
    raise ImproperlyConfigured(str(_exc)) from None
# Alert emails link to the dashboard under the shop's base URL unless told otherwise.
JOBS_BASE_URL = env.str("JOBS_BASE_URL", default=SHOP_BASE_URL)

# Order pipeline (orders/jobs.py)
# Timeout in seconds of every outgoing call: warehouse, webhooks, SMTP.
HTTP_TIMEOUT = env.float("HTTP_TIMEOUT", default=10.0)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=HTTP_TIMEOUT)
WAREHOUSE_URL = env.str("WAREHOUSE_URL", default="")
WAREHOUSE_SECRET = env.str("WAREHOUSE_SECRET", default="")
# Webhook deliveries each endpoint may start, across all workers ("N/s", "N/m", ...); the endpoints
# share the workers fairly, so one slow or flooded endpoint cannot hold up the others.
WEBHOOK_RATE_LIMIT = env.str("WEBHOOK_RATE_LIMIT", default="10/s")
REPORT_RECIPIENTS = env.list("REPORT_RECIPIENTS", default=[])
FOLLOWUP_DELAY = env.float("FOLLOWUP_DELAY", default=24 * 3600)
# First retry delay (seconds) of the pipeline's jobs; it doubles per attempt, capped at an hour.
PIPELINE_RETRY_BACKOFF = env.float("PIPELINE_RETRY_BACKOFF", default=10.0)
# Circuit breakers of the calls out (the warehouse; each webhook endpoint): this many failed attempts
# within the window (seconds) hold the rest of its jobs for the cooldown (seconds), then one probe.
PIPELINE_BREAKER_FAILURES = env.int("PIPELINE_BREAKER_FAILURES", default=5)
PIPELINE_BREAKER_WINDOW = env.float("PIPELINE_BREAKER_WINDOW", default=60.0)
PIPELINE_BREAKER_COOLDOWN = env.float("PIPELINE_BREAKER_COOLDOWN", default=120.0)
# Deliveries to one webhook endpoint at once: a hanging endpoint holds at most this many threads.
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=4)
VAT_RATE = env.str("VAT_RATE", default="0.19")  # prices include VAT at this rate
SELLER_NAME = env.str("SELLER_NAME", default=SHOP_NAME)
SELLER_ADDRESS = env.list("SELLER_ADDRESS", default=["Example Street 1", "10115 Berlin", "Germany"])
SELLER_VAT_ID = env.str("SELLER_VAT_ID", default="DE000000000")
SELLER_EMAIL = env.str("SELLER_EMAIL", default="shop@example.com")
# django-environ reads filemail:///abs/path as the relative path "abs/path"; we mean the absolute one.
_email_url = env.str("EMAIL_URL", default="")
if _email_url.startswith("filemail:///") and not _email_url.startswith("filemail:////"):
    EMAIL_FILE_PATH = "/" + _email_url.removeprefix("filemail:///")

# Django's Tasks API (django_tasks; django.tasks from Django 6): tasks become jobs run by runworker.
# OPTIONS: per-task max_attempts, backoff, timeout, rate_limit, unique_key (see jobs/tasks_backend.py).
INSTALLED_APPS += ["django_tasks"]
TASKS = {
    "default": {
        "BACKEND": "jobs.tasks_backend.JobsBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"defaults": {"max_attempts": 3}, "tasks": {}},
    },
}
