"""A per-client request limit in fixed windows, counted in the database (no Redis), so that it holds
across all web processes.

One request is one conditional UPDATE (``count < limit``); the first request of a window inserts the
row, and the unique constraint settles a race between two first requests. Rows of past windows are
deleted when a new window starts.
"""

import ipaddress
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest

from jobs.registry import Rate
from jobs.registry import parse_rate as parse_job_rate
from shop.models import RateLimitWindow


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0  # seconds until the window ends, when refused


def parse_rate(text: str) -> Rate | None:
    """``"60/m"``, ``"1000/h"``, ``"5/10s"`` as a Rate (the job queue's parser; ``"0/m"`` refuses
    every request); None for an empty string (no limit)."""
    if not text or not text.strip():
        return None
    return parse_job_rate(text, minimum=0)


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR; the first X-Forwarded-For entry instead only when ``settings.TRUSTED_PROXY`` says
    the proxy in front of us sets that header (a client could write it otherwise)."""
    if settings.TRUSTED_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        try:
            return str(ipaddress.ip_address(forwarded))
        except ValueError:
            pass
    return request.META.get("REMOTE_ADDR") or "unknown"


def hit(scope: str, client: str, rate: Rate, now: float | None = None) -> Decision:
    """Count one request of ``client`` against ``rate``; refused once the window's limit is reached."""
    now = time.time() if now is None else now
    window = int(now // rate.period) * rate.period
    retry_after = max(1, math.ceil(window + rate.period - now))
    if rate.limit <= 0:
        return Decision(False, retry_after)
    rows = RateLimitWindow.objects.filter(scope=scope, client=client, window=window)
    if rows.filter(count__lt=rate.limit).update(count=F("count") + 1):
        return Decision(True)
    if rows.filter(count__gte=rate.limit).exists():  # a count never goes down within its window
        return Decision(False, retry_after)
    try:
        with transaction.atomic():
            RateLimitWindow.objects.create(scope=scope, client=client, window=window, count=1)
    except IntegrityError:  # another process opened the window first: count against its row
        if rows.filter(count__lt=rate.limit).update(count=F("count") + 1):
            return Decision(True)
        return Decision(False, retry_after)
    RateLimitWindow.objects.filter(scope=scope, window__lt=window).delete()
    return Decision(True)


def check(request: HttpRequest, scope: str, rate_setting: str) -> Decision:
    """Count ``request`` against the rate in ``settings.<rate_setting>`` (empty: unlimited)."""
    rate = parse_rate(getattr(settings, rate_setting))
    if rate is None:
        return Decision(True)
    return hit(scope, client_ip(request)[:64], rate)
