"""Settings for benchmark processes: the shop's settings plus the no-op job types the scenarios use."""

import os

os.environ.setdefault("SECRET_KEY", "benchmark-only-key")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from shop.settings import *  # noqa: E402,F403
from shop.settings import INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
API_RATE_LIMIT = "1000000/m"
