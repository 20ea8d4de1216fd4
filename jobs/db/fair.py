"""The reads of the fair-share claim (jobs.fairshare): which keys of a type have pending jobs, and the
next due jobs of each, both walking the index of keyed pending jobs (``jobs_job_fair_idx``: type, key,
claim order). The claim itself is ``claim_ids(ids=...)``, under the type's lock (``lock_name``)."""

from collections.abc import Sequence
from datetime import datetime

from django.db import connection

from jobs.db.base import dt, in_list
from jobs.db.claim import breaker_holds


def pending_keys(job_type: str) -> list[str]:
    """The keys of ``job_type`` that have pending jobs, due or not, in key order.

    A skip scan (a recursive query taking the next key above the last): one index probe per key,
    however many jobs each key has. ``SELECT DISTINCT`` would read every pending job of the type on
    every claim: 10,000 rows for one flooded key.
    """
    # ORDER BY ... LIMIT 1 rather than MIN(): a planner without statistics (right after a bulk enqueue)
    # would aggregate every pending job of the type for MIN (6 ms for 10,000), not take the first.
    first = (
        "(SELECT fair_key FROM jobs_job WHERE status = 'pending' AND type = %s AND fair_key IS NOT NULL{}"
        " ORDER BY fair_key LIMIT 1)"
    )
    sql = (
        f"WITH RECURSIVE k(key) AS (SELECT {first.format('')}"
        f" UNION ALL SELECT {first.format(' AND fair_key > k.key')} FROM k"
        " WHERE k.key IS NOT NULL) SELECT key FROM k WHERE key IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_type, job_type])
        return [row[0] for row in cursor.fetchall()]


def next_due(
    job_type: str,
    wanted: dict[str, int],
    *,
    now: datetime,
    queues: Sequence[str] | None = None,
    above_priority: int | None = None,
    held: Sequence[tuple[str, str]] = (),
) -> list[tuple[int, str, int, datetime]]:
    """Up to ``wanted[key]`` due pending jobs of each key, in claim order within the key, as (id, key,
    priority, run_at): one statement, a limited index walk per key. Jobs of a paused queue or type are
    left out. Nothing is locked: the claim that follows takes what is
    still pending and due. ``run_at`` is for ordering only (SQLite gives its stored text, which sorts
    as the times do)."""
    parts, params = [], []
    for key, count in wanted.items():
        where = [
            "status = 'pending'",
            "type = %s",
            "fair_key = %s",
            "run_at <= %s",
            "queue NOT IN (SELECT q.name FROM jobs_queuestate q WHERE q.paused)",
            "type NOT IN (SELECT t.name FROM jobs_jobtypestate t WHERE t.paused)",
        ]
        params += [job_type, key, dt(now)]
        if queues:
            where.append(in_list("queue", queues, params))
        if above_priority is not None:
            where.append("priority > %s")
            params.append(above_priority)
        where += breaker_holds(held, None, params)  # a key whose breaker is open is none of the candidates
        condition = " AND ".join(where)
        parts.append(
            f"SELECT * FROM (SELECT id, fair_key, priority, run_at FROM jobs_job j WHERE {condition}"
            f" ORDER BY priority DESC, run_at, id LIMIT %s) AS k{len(parts)}"
        )
        params.append(count)
    if not parts:
        return []
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        return cursor.fetchall()
