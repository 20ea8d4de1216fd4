"""The queue's settings, with their defaults. Projects set ``JOBS_*`` in their Django settings."""

from django.conf import settings

DEFAULTS = {
    # Seconds between polls when nothing wakes the worker (LISTEN/NOTIFY on PostgreSQL does).
    "JOBS_POLL_INTERVAL": 0.2,
    # Use LISTEN/NOTIFY on PostgreSQL; switch off behind a pooler that cannot carry it.
    "JOBS_LISTEN_NOTIFY": True,
    # A running job's heartbeat period, and the age after which a silent job is presumed orphaned.
    "JOBS_HEARTBEAT_INTERVAL": 5.0,
    "JOBS_STALE_AFTER": 30.0,
    # Seconds a claim or heartbeat statement (and any lock it waits for) may take on PostgreSQL before
    # it errors and the worker backs off: a worker cut off from the database notices within seconds.
    "JOBS_DB_TIMEOUT": 5.0,
    # Seconds a stopping worker waits for in-flight jobs before handing them back.
    "JOBS_GRACE_PERIOD": 30.0,
    # Seconds between the scheduler's looks for due cron schedules.
    "JOBS_SCHEDULER_INTERVAL": 1.0,
    # PostgreSQL: claims and completions commit without waiting for the WAL flush (see db.relax_commit).
    "JOBS_RELAXED_COMMIT": True,
    # Jobs a worker may hold claimed beyond its running ones (fewer claims; a slow job's followers wait).
    # None: adaptive, as many as threads, more for short jobs (about 50 ms of work, at most 200).
    "JOBS_PREFETCH": None,
    # Keyed job types (a per-key rate limit, fair_key, a concurrency key) are claimed round-robin
    # across their keys (jobs.fairshare); False: in plain claim order, the keys' limits still holding.
    "JOBS_FAIR_SHARE": True,
    # Run jobs inline at enqueue (unit tests of code that enqueues).
    "JOBS_IMMEDIATE": False,
    # Finished jobs older than this are pruned by the cleanup_completed_jobs schedule.
    "JOBS_PRUNE_AFTER_DAYS": 7,
    # Seconds a worker thread keeps its database connection across jobs when CONN_MAX_AGE is 0 (which
    # would open a connection per job); broken connections are replaced at once (health checks).
    "JOBS_WORKER_CONN_MAX_AGE": 300,
    # Rows per transaction of a bulk action by filter (jobs.staff.bulk), each batch with its audit row.
    "JOBS_BULK_BATCH_SIZE": 1000,
    # Bearer token for the Prometheus endpoint; empty: only a staff session can read it.
    "JOBS_METRICS_TOKEN": "",
    # Alerts (jobs.alerts): a queue with due jobs and no job finished for this many seconds is stalled.
    "JOBS_STALL_AFTER": 300.0,
    # Lag SLO in seconds: a default and per-queue overrides, "300,mail=60" (empty: no lag alerts).
    "JOBS_LAG_SLO": "300",
    # This many dead letters within JOBS_DEAD_LETTER_WINDOW seconds is a burst (0: no burst alerts).
    "JOBS_DEAD_LETTER_BURST": 10,
    "JOBS_DEAD_LETTER_WINDOW": 300.0,
    # Comma-separated addresses told once when an incident opens and once when it closes.
    "JOBS_ALERT_EMAILS": "",
    # Seconds between a worker's evaluations of the alerts.
    "JOBS_ALERT_INTERVAL": 15.0,
    # Where the staff dashboard is served from, for the link in alert emails (empty: no link).
    "JOBS_BASE_URL": "",
}


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])


def parse_lag_slo(text: str) -> tuple[float | None, dict[str, float]]:
    """``JOBS_LAG_SLO``: ``"300"`` (every queue), ``"300,mail=60"`` (mail 60 s, the others 300 s) or
    ``"mail=60"`` (only mail has one) -> (default seconds or None, {queue: seconds}). ValueError with
    a readable message otherwise."""
    default, per_queue = None, {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        name, equals, seconds = item.rpartition("=")
        name = name.strip()
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if value <= 0 or (equals and not name):
            raise ValueError(
                f"JOBS_LAG_SLO item {item!r} is not seconds or queue=seconds (a positive number), "
                "e.g. '300,mail=60'"
            )
        if name:
            per_queue[name] = value
        elif default is None:
            default = value
        else:
            raise ValueError(f"JOBS_LAG_SLO has two defaults ({default:g} and {value:g}): name the queue")
    return default, per_queue


def lag_slo(queue: str) -> float | None:
    """The lag SLO in seconds of ``queue``, or None when it has none."""
    default, per_queue = parse_lag_slo(get("JOBS_LAG_SLO"))
    return per_queue.get(queue, default)


def alert_emails() -> list[str]:
    return [a.strip() for a in get("JOBS_ALERT_EMAILS").split(",") if a.strip()]
