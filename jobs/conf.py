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
}


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])
