"""Rate limits per job type ("120/m"), held across every worker process together (per key:
``jobs.fairshare``).

A sliding window of recorded starts, counted and extended under a per-type transaction lock in the
claim transaction. A job over the limit is simply not claimed: it waits without using an attempt, and
other types keep running.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta

from jobs import db
from jobs.models import RateLimitStart
from jobs.registry import JobType, job_types

# Starts are kept this long past their window: a claim whose clock was read earlier (it waited for
# the lock) still counts them. Deleting at the window's edge let such a claim miss starts that a
# later claim had just deleted: 12 starts in one second under a 10/s limit, with three workers on a
# loaded machine.
KEEP = timedelta(seconds=60)


def limited_types(types: Sequence[str] | None = None) -> list[str]:
    """Types with a rate limit for the whole type (a per-key limit is held by jobs.fairshare)."""
    names = [name for name, jt in job_types().items() if jt.rate_limit and jt.rate_key is None]
    if types is not None:
        names = [n for n in names if n in types]
    return sorted(names)


def claim_limited(job_type_name: str, limit: int, *, now: datetime, **common) -> list[int]:
    """Claim up to ``limit`` jobs of one rate-limited type, as many as its window still allows."""
    job_type: JobType = job_types()[job_type_name]
    count, seconds = job_type.rate
    if not db.lock_name(f"jobs.ratelimit:{job_type_name}"):
        return []  # another worker is claiming this type: its window is theirs until they commit
    window_start = now - timedelta(seconds=seconds)
    starts = RateLimitStart.objects.filter(type=job_type_name, key="")
    starts.filter(started_at__lte=window_start - KEEP).delete()
    used = starts.filter(started_at__gt=window_start).count()
    allowed = min(limit, count - used)
    if allowed <= 0:
        return []
    ids = db.claim_ids(limit=allowed, types=[job_type_name], now=now, **common)
    RateLimitStart.objects.bulk_create([RateLimitStart(type=job_type_name, started_at=now) for _ in ids])
    return ids
