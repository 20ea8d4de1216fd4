"""Settings for the test suite: the project's settings with a throwaway key and fast hashing.

Worker processes started by tests inherit DJANGO_SETTINGS_MODULE, so they use these settings too.
"""

import os

os.environ.setdefault("SECRET_KEY", "insecure-key-for-the-test-suite-only")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
# The order pipeline retries within a fraction of a second instead of after 10 s.
os.environ.setdefault("PIPELINE_RETRY_BACKOFF", "0.05")
# Worker processes of tests that count every job would see a reconciliation every minute: once a day
# here (tests of reconciliation run it themselves).
os.environ.setdefault("RECONCILE_SCHEDULE", "15 4 * * *")
# High enough never to limit the suite; tests of the limit set their own.
os.environ.setdefault("API_RATE_LIMIT", "1000000/m")
# Tests of tracing read every span: keep them all (the sampler's own tests build it with its defaults).
os.environ.setdefault("TRACE_SAMPLE_RATIO", "1")
os.environ.setdefault("TRACE_SAMPLE_MAX_PER_SECOND", "1000000")

from shop.settings import *  # noqa: E402,F403
from shop.settings import DATABASES, INSTALLED_APPS, VAR_DIR  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if "EMAIL_URL" not in os.environ:
    # In-memory outbox (mail.outbox) for the test process; worker processes started by tests get an
    # EMAIL_URL (filemail) instead, since they cannot share it.
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
MEDIA_ROOT = os.environ.get("MEDIA_ROOT") or str(VAR_DIR / "test-media")
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that worker processes started by tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

# Job types and models used only by the queue's own tests; an app, so that worker processes started
# by tests discover the same types.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]

# Django's Tasks API on the queue: tasks in tests/testapp/tasks.py; those listed here have extras.
TASKS = {
    "default": {
        "BACKEND": "jobs.tasks_backend.JobsBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "defaults": {"max_attempts": 3, "backoff": {"base": 0.01, "cap": 0.05}},
            "tasks": {
                "tests.testapp.tasks.fail": {"max_attempts": 1},
                "tests.testapp.tasks.flaky": {"max_attempts": 4, "backoff": {"base": 0.01, "cap": 0.05}},
                "tests.testapp.tasks.limited": {"rate_limit": "5/s", "max_attempts": 1},
                "tests.testapp.tasks.too_slow": {"timeout": 0.5, "max_attempts": 1},
                "tests.testapp.tasks.charge_reminder": {"unique_key": "tests.testapp.tasks.order_key"},
                "tests.testapp.tasks.raises_once": {"max_attempts": 1},
                "tests.testapp.tasks.stalls": {"timeout": 0.5, "max_attempts": 1},
                "tests.testapp.tasks.async_stalls": {"timeout": 0.5, "max_attempts": 1},
                "tests.testapp.tasks.dies": {"max_attempts": 2},
            },
        },
    },
}
