"""Fair share and per-key rate limits: the claim of job types whose jobs carry a key (``fair_key``: the
key of a per-key rate limit, a declared ``fair_key``, or the concurrency key).

With several keys waiting, claims go round-robin across the keys, weighted if the type declares
``weights``, so one flooded key cannot starve the others: stride scheduling, where each key's row
(``FairShareKey``) holds its place in the rotation, each claimed job moves its key on by 1/weight, and
the keys furthest behind are claimed first (ties: in claim order). A key seen for the first time
takes its first turn next, then rotates with the others: it neither waits for their backlog nor
claims a burst of credit; a key whose jobs all finished loses its row. Priority still comes first:
a higher-priority job of any key is claimed before a lower one.

A per-key rate limit is a sliding window of ``RateLimitStart`` rows per (type, key): a key over its
limit is simply not claimed (its jobs wait without using an attempt) while the type's other keys run.

Everything is decided under the type's transaction lock in the claim transaction (``db.lock_name``), so
it holds across every worker process: another worker's claim meanwhile leaves the type to this one.
Plain types never come here: their jobs have no key and the claim index holds only those
(``db.claim_sql``), so the plain claim costs what it did.

``JOBS_FAIR_SHARE = False`` claims keyed jobs in plain claim order (priority, run_at, id) across keys;
per-key rate limits and concurrency keys still hold.
"""

import heapq
import random
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db.models import Count

from jobs import conf, db, ratelimit
from jobs.models import FairShareKey, RateLimitStart
from jobs.registry import JobType, job_types

# Keys considered per claim, those furthest behind first: a claim takes at most a few hundred jobs.
MAX_KEYS = 500


def fair_types(types: Sequence[str] | None = None) -> list[str]:
    """The registered types whose jobs carry a key, and so are claimed here."""
    names = [name for name, jt in job_types().items() if jt.share_key is not None]
    if types is not None:
        names = [n for n in names if n in types]
    return sorted(names)


def claim(names: Sequence[str], limit: int, **common) -> list[int]:
    """Claim up to ``limit`` jobs of the keyed types ``names``, type by type in a random order (no
    type always last)."""
    names = list(names)
    random.shuffle(names)
    ids: list[int] = []
    for name in names:
        if len(ids) >= limit:
            break
        ids += claim_fair(name, limit - len(ids), **common)
    return ids


def claim_fair(
    job_type_name: str,
    limit: int,
    *,
    now: datetime,
    queues: Sequence[str] | None = None,
    above_priority: int | None = None,
    expired: list[int] | None = None,
    **common,
) -> list[int]:
    """Claim up to ``limit`` due jobs of one keyed type, round-robin across its keys, as far as each
    key's rate limit and concurrency limit allow. None while another worker's claim holds the type."""
    job_type: JobType = job_types()[job_type_name]
    keys = db.pending_keys(job_type_name)  # one index probe when none wait: all an idle type costs
    if not keys or not db.lock_name(f"jobs.fairshare:{job_type_name}"):
        return []
    if job_type.concurrency_key is not None and not db.lock_keyed_claims():
        return []
    if job_type.rate is not None and job_type.rate_key is None:
        # A limit for the whole type: its window is shared with ratelimit.claim_limited (jobs without
        # a key, enqueued before the type had one), under the same lock.
        if not db.lock_name(f"jobs.ratelimit:{job_type_name}"):
            return []
        limit = min(limit, _type_allowance(job_type, now))
        if limit <= 0:
            return []
    positions = _positions(job_type_name, keys, job_type.weight)
    wanted = _rate_allowance(job_type, keys, now, limit)
    ordered = sorted(wanted, key=lambda k: positions.get(k, 0.0))[:MAX_KEYS]
    candidates = db.next_due(
        job_type_name,
        {key: wanted[key] for key in ordered},
        now=now,
        queues=queues,
        above_priority=above_priority,
        held=common.get("held", ()),
    )
    picked = _pick(job_type, candidates, positions, limit)
    expired = expired if expired is not None else []
    options = dict(now=now, queues=queues, above_priority=above_priority, expired=expired, **common)
    if job_type.concurrency_key is None:
        ids = db.claim_ids(ids=picked, limit=len(picked), **options) if picked else []
    else:  # one statement per job, so that each counts the running ones before it (db.claim_keyed_ids)
        ids = [pk for one in picked for pk in db.claim_ids(ids=[one], limit=1, keyed=True, **options)]
    key_of = {pk: key for pk, key, _, _ in candidates}
    claimed = Counter(key_of[pk] for pk in ids)
    _advance(job_type, positions, claimed)
    if job_type.rate is not None:
        per_key = job_type.rate_key is not None
        RateLimitStart.objects.bulk_create(
            [
                RateLimitStart(type=job_type_name, key=key if per_key else "", started_at=now)
                for key, n in claimed.items()
                for _ in range(n)
            ]
        )
    return ids


def _type_allowance(job_type: JobType, now: datetime) -> int:
    count, seconds = job_type.rate
    window_start = now - timedelta(seconds=seconds)
    starts = RateLimitStart.objects.filter(type=job_type.name, key="")
    starts.filter(started_at__lte=window_start - ratelimit.KEEP).delete()
    return count - starts.filter(started_at__gt=window_start).count()


def _positions(job_type_name: str, keys: list[str], weight) -> dict[str, float]:
    """Each waiting key's place in the rotation (a new key's: one turn before the furthest behind).
    Rows of keys with no pending job left are deleted."""
    rows = dict(FairShareKey.objects.filter(type=job_type_name).values_list("key", "position"))
    waiting = set(keys)
    gone = [key for key in rows if key not in waiting]
    if gone:
        FairShareKey.objects.filter(type=job_type_name, key__in=gone).delete()
    known = [rows[key] for key in keys if key in rows]
    if not known:
        return dict.fromkeys(keys, 0.0)
    # one turn before the key furthest behind: a new key's first turn comes next, level with it
    return {key: rows[key] if key in rows else min(known) - 1.0 / weight(key) for key in keys}


def _rate_allowance(job_type: JobType, keys: list[str], now: datetime, limit: int) -> dict[str, int]:
    """How many jobs each key may start now: ``limit``, or what its rate-limit window has left."""
    if job_type.rate_key is None:
        return dict.fromkeys(keys, limit)
    count, seconds = job_type.rate
    window_start = now - timedelta(seconds=seconds)
    starts = RateLimitStart.objects.filter(type=job_type.name)
    starts.filter(started_at__lte=window_start - ratelimit.KEEP).delete()
    used = dict(
        starts.filter(started_at__gt=window_start, key__in=keys)
        .values_list("key")
        .annotate(n=Count("id"))
        .order_by()
    )
    allowance = {key: min(limit, count - used.get(key, 0)) for key in keys}
    return {key: n for key, n in allowance.items() if n > 0}


def _pick(job_type: JobType, candidates: list[tuple], positions: dict[str, float], limit: int) -> list[int]:
    """Up to ``limit`` of the candidates (each key's in claim order): by priority, then each key's
    place in the rotation after the jobs picked before it (or by claim order, fair share off)."""
    fair = conf.get("JOBS_FAIR_SHARE")
    by_key: dict[str, list[tuple]] = {}
    for row in candidates:
        by_key.setdefault(row[1], []).append(row)
    heap = []
    for key, rows in by_key.items():
        pk, _, priority, run_at = rows[0]
        heap.append((-priority, _level(positions[key]) if fair else 0.0, run_at, pk, key, 0))
    heapq.heapify(heap)
    picked: list[int] = []
    while heap and len(picked) < limit:
        _, place, _, pk, key, at = heapq.heappop(heap)
        picked.append(pk)
        rows = by_key[key]
        if at + 1 < len(rows):
            nxt, _, priority, run_at = rows[at + 1]
            step = 1.0 / job_type.weight(key) if fair else 0.0
            heapq.heappush(heap, (-priority, _level(place + step), run_at, nxt, key, at + 1))
    return picked


def _level(position: float) -> float:
    """A place compared for ties: 1/3 + 1/3 + 1/3 and 1.0 differ in their last bit."""
    return round(position, 9)


def _advance(job_type: JobType, positions: dict[str, float], claimed: Counter) -> None:
    """Move each key on by the jobs just claimed of it, 1/weight each."""
    if not claimed:
        return
    FairShareKey.objects.bulk_create(
        [
            FairShareKey(type=job_type.name, key=key, position=positions[key] + n / job_type.weight(key))
            for key, n in claimed.items()
        ],
        update_conflicts=True,
        unique_fields=["type", "key"],
        update_fields=["position"],
    )
