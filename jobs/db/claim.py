"""The claim: one statement marks due pending jobs running for a worker, in claim order, under the
locks that keep two workers off the same row (see the package's docstring); and the row and
advisory locks of the reaper, the scheduler, rate limits and concurrency keys."""

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from django.db import connection
from django.db.models import DEFERRED, JSONField
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone

from jobs import conf
from jobs.db.base import dt, in_list, is_postgres, timeout_ms
from jobs.models import Job

# The columns a claimed job carries: what running it, recording its outcome and the lifecycle signals'
# receivers (tracing, logs, the Tasks backend's result) read. The others (result, tags, meta, expires_at,
# concurrency and dependency bookkeeping) are deferred: reading one loads them all, in one query (see
# Job.refresh_from_db). Building the whole row cost 34 us a job on SQLite against 25 us for these
# (JSON and datetime conversions), 58 against 38 us on PostgreSQL (bench/README.md).
CLAIMED = (
    "id, status, type, queue, payload, payload_version, priority, run_at, attempts, max_attempts,"
    " locked_by, lock_token, created_at, started_at, finished_at, status_reason, errors, trace_context,"
    " snoozes, cancel_requested"
)

# SQLite's sqlite3 module parses a returned column declared as a timestamp with a Python function of
# Django's; the claim returns its timestamps with a unary + (the same text, no declared type) for the
# converters below to parse in C.
CLAIMED_SQLITE = ", ".join(
    f"+{c}" if c in ("run_at", "created_at", "started_at", "finished_at") else c for c in CLAIMED.split(", ")
)


def claim_sql(
    *,
    worker_id: str,
    token: str,
    now: datetime,
    limit: int,
    queues: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    exclude_types: Sequence[str] = (),
    keyed: bool = False,
    above_priority: int | None = None,
    returning: str = "id",
    held: Sequence[tuple[str, str]] = (),
    only_key: str | None = None,
    ids: Sequence[int] | None = None,
    probe: bool = False,
) -> tuple[str, list]:
    params: list = [dt(now)]
    where = _due("%s")
    # Jobs with a fair-share key are claimed by jobs.fairshare, which names them (``ids``); every
    # other claim walks the claim index, which holds only jobs without one, but a breaker's probe
    # (jobs.breakers), which takes one job of its type or key, with a fair-share key or not.
    walk_index = ids is None and not probe
    if ids is not None:
        where.append(in_list("j.id", ids, params))
    elif walk_index:
        where.append("j.fair_key IS NULL")
    where += _chosen(params, queues, types, above_priority)
    if exclude_types:
        where.append("NOT " + in_list("j.type", exclude_types, params))
    if keyed:
        where.append("j.concurrency_key IS NOT NULL")
        where.append(
            "(SELECT COUNT(*) FROM jobs_job r WHERE r.status = 'running'"
            " AND r.concurrency_key = j.concurrency_key) < COALESCE(j.concurrency_limit, 1)"
        )
    else:
        where.append("j.concurrency_key IS NULL")
    where += breaker_holds(held, only_key, params)
    condition = " AND ".join(where)
    # A job found past its expires_at is cancelled by this same statement instead of run late (no
    # second statement per claim); the caller tells the two apart by the status returned. Every SET
    # expression reads the row as it was, so "expired" means the same in each.
    expired = "expires_at IS NOT NULL AND expires_at <= %s"
    set_running = (
        f"status = CASE WHEN {expired} THEN 'cancelled' ELSE 'running' END,"
        f" status_reason = CASE WHEN {expired} THEN 'expired' ELSE status_reason END,"
        f" finished_at = CASE WHEN {expired} THEN %s ELSE finished_at END,"
        f" attempts = CASE WHEN {expired} THEN attempts ELSE attempts + 1 END,"
        f" locked_by = CASE WHEN {expired} THEN NULL ELSE %s END,"
        f" lock_token = CASE WHEN {expired} THEN NULL ELSE %s END,"
        f" started_at = CASE WHEN {expired} THEN started_at ELSE %s END,"
        f" heartbeat_at = CASE WHEN {expired} THEN NULL ELSE %s END, progress = NULL"
    )
    at = dt(now)
    set_params = [at, at, at, at, at, at, worker_id, at, token, at, at, at, at]
    # Named jobs are found by their ids, all of them: no claim order to walk (with sorts off, a claim
    # order would walk a whole index: 300 ms).
    order = " ORDER BY j.priority DESC, j.run_at, j.id" if ids is None else ""
    if is_postgres():
        columns = ", ".join(f"jobs_job.{c}" for c in returning.split(", "))
        sql = (
            f"WITH locked AS (SELECT j.id FROM jobs_job j WHERE {condition}"
            f"{order} LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" UPDATE jobs_job SET {set_running} FROM locked"
            f" WHERE jobs_job.id = locked.id RETURNING {columns}"
        )
        return sql, params + [limit] + set_params
    # Without statistics SQLite would rather sort every pending row found through (status, finished_at);
    # the partial index is already in claim order, so name it.
    indexed = " INDEXED BY jobs_job_claim_idx" if walk_index else ""
    sql = (
        f"UPDATE jobs_job SET {set_running} WHERE id IN (SELECT j.id FROM jobs_job AS j"
        f"{indexed} WHERE {condition}{order} LIMIT %s) RETURNING {returning}"
    )
    return sql, set_params + params + [limit]


def _due(now: str) -> list[str]:
    """Pending, due by ``now`` (SQL: a placeholder or the database's clock), in no paused queue or type."""
    return [
        "j.status = 'pending'",
        f"j.run_at <= {now}",
        "j.queue NOT IN (SELECT q.name FROM jobs_queuestate q WHERE q.paused)",
        "j.type NOT IN (SELECT t.name FROM jobs_jobtypestate t WHERE t.paused)",
    ]


def _chosen(params: list, queues, types, above_priority) -> list[str]:
    """The worker's choice: its queues, its types, only jobs above a priority."""
    where = []
    if queues:
        where.append(in_list("j.queue", queues, params))
    if types:
        where.append(in_list("j.type", types, params))
    if above_priority is not None:
        where.append("j.priority > %s")
        params.append(above_priority)
    return where


def claim_at_once(
    *,
    worker_id: str,
    token: str,
    limit: int,
    queues: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    above_priority: int | None = None,
    exclude_types: Sequence[str] = (),
    breakers: bool = False,
) -> list[Job]:
    """PostgreSQL's common claim in one round trip, outside any transaction of ours: the settings of
    prepare_claim() and the claim statement sent as one query, which PostgreSQL runs as one implicit
    transaction (the settings, local to it, apply to the claim; its commit ends it). The claim
    transaction it replaces took four (BEGIN, the settings, the claim, COMMIT), and breakers.holds()
    a fifth: with the claim loop's thread waiting on each while handler threads hold the interpreter,
    the one-process drain was bound by them (bench/README.md).

    Only jobs without a key, not of ``exclude_types`` (rate-limited as a whole) and not past their
    ``expires_at`` are claimed, by the database's clock
    (``statement_timestamp()``); with ``breakers``, a type whose breaker is not closed is skipped in
    the statement itself. An expired job is locked and counted against ``limit`` but left as it is, so
    that the claim comes back short: the caller then claims the rest in a transaction, which cancels
    expired jobs with their descendants, and takes rate-limited and keyed jobs and breaker probes
    (jobs.engine)."""
    relaxed = "off" if conf.get("JOBS_RELAXED_COMMIT") else "on"
    bound = timeout_ms()
    params: list = [relaxed, bound, bound]
    where = [*_due("statement_timestamp()"), "j.fair_key IS NULL", "j.concurrency_key IS NULL"]
    where += _chosen(params, queues, types, above_priority)
    if exclude_types:
        where.append("NOT " + in_list("j.type", exclude_types, params))
    if breakers:  # as breaker_holds() for the pairs of holds(): this claim's jobs have no key
        where.append(
            "NOT EXISTS (SELECT 1 FROM jobs_breakerstate b"
            " WHERE b.type = j.type AND b.key = '' AND b.state <> 'closed')"
        )
    columns = ", ".join(f"jobs_job.{c}" for c in CLAIMED.split(", "))
    sql = (
        "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true),"
        " set_config('synchronous_commit', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('lock_timeout', %s, true);"
        " WITH locked AS (SELECT j.id, (j.expires_at IS NOT NULL AND j.expires_at <= statement_timestamp())"
        f" AS expired FROM jobs_job j WHERE {' AND '.join(where)}"
        " ORDER BY j.priority DESC, j.run_at, j.id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE jobs_job SET status = 'running', attempts = attempts + 1, locked_by = %s, lock_token = %s,"
        " started_at = statement_timestamp(), heartbeat_at = statement_timestamp(), progress = NULL"
        f" FROM locked WHERE jobs_job.id = locked.id AND NOT locked.expired RETURNING {columns}"
    )
    with connection.cursor() as cursor:
        _fast_timestamps(cursor)
        cursor.execute(sql, [*params, limit, worker_id, token])
        cursor.nextset()
        return claimed_jobs(cursor.fetchall())


@functools.cache
def _timestamptz_c_loader():
    from psycopg import adapters, postgres
    from psycopg.pq import Format

    return adapters.get_loader(postgres.types["timestamptz"].oid, Format.TEXT)


def _fast_timestamps(cursor) -> None:
    """Read this cursor's timestamps with psycopg's C loader. Django's own (a Python subclass of it, so
    that a datetime comes back in the connection's time zone) parsed the claimed rows' three timestamps
    in some 12 us a row, a fifth of the claim loop's time in a drain of no-op jobs; with the connection
    in UTC, as Django keeps it unless DATABASES sets TIME_ZONE, both give the same datetimes."""
    if connection.timezone is not UTC or connection.timezone_name != "UTC":
        return
    cursor.cursor.adapters.register_loader("timestamptz", _timestamptz_c_loader())


def breaker_holds(held: Sequence[tuple[str, str]], only_key: str | None, params: list) -> list[str]:
    """Circuit breakers (jobs.breakers): skip the jobs of each open (type, key), key "" meaning the
    type's jobs without a concurrency key; ``only_key`` claims one key's jobs (a breaker's probe).
    Nothing is added while every breaker is closed."""
    where = []
    for job_type, key in held:
        if key:
            where.append("(j.type <> %s OR j.concurrency_key IS NULL OR j.concurrency_key <> %s)")
            params += [job_type, key]
        else:
            where.append("(j.type <> %s OR j.concurrency_key IS NOT NULL)")
            params.append(job_type)
    if only_key is not None:
        where.append("j.concurrency_key = %s")
        params.append(only_key)
    return where


def claim_ids(*, expired: list[int] | None = None, **options) -> list[int]:
    """Mark up to ``limit`` due pending jobs running for ``worker_id`` and return their ids.

    Runs inside the caller's transaction. Order: priority desc, run_at, id. ``keyed`` selects jobs
    with a concurrency key (see claim_keyed_ids); otherwise only jobs without one are considered.
    Jobs found past their ``expires_at`` are cancelled instead, their ids added to ``expired``.
    """
    sql, params = claim_sql(returning="id, status", **options)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if expired is not None:
        expired += [row[0] for row in rows if row[1] != "running"]
    return [row[0] for row in rows if row[1] == "running"]


def claim_jobs(**options) -> tuple[list, list]:
    """The common claim as one statement returning the rows' CLAIMED columns (inside the caller's
    transaction): the jobs claimed, and those it cancelled as expired."""
    options.pop("expired", None)
    postgres = is_postgres()
    sql, params = claim_sql(returning=CLAIMED if postgres else CLAIMED_SQLITE, **options)
    with connection.cursor() as cursor:
        if postgres:
            _fast_timestamps(cursor)
        cursor.execute(sql, params)
        rows = claimed_jobs(cursor.fetchall())
    return [j for j in rows if j.status == "running"], [j for j in rows if j.status != "running"]


_plans: dict[str, tuple] = {}


def claimed_jobs(rows: list[tuple]) -> list[Job]:
    """Job instances from rows of the CLAIMED columns, as RawQuerySet and Model.from_db build them (each
    value through its field's database converters, the other columns deferred), with the converters
    worked out once per database instead of once per claim. Without pre_init/post_init receivers for
    Job, an instance gets what Model.__init__ would set (its state and the values by attribute name)
    without the 31-field walk and the two signal sends (hydration 23 -> 13 us a job on SQLite, 28 -> 17
    us on PostgreSQL)."""
    plan = _plans.get(connection.alias)
    if plan is None:
        names = CLAIMED.split(", ")
        query = Job.objects.all().query
        compiler = connection.ops.compiler("SQLCompiler")(query, connection, connection.alias)
        cols = [Job._meta.get_field(name).get_col(Job._meta.db_table) for name in names]
        converters = [
            (pos, _converter(convs, expression))
            for pos, (convs, expression) in compiler.get_converters(cols).items()
        ]
        attnames = [Job._meta.get_field(name).attname for name in names]
        fields = Job._meta.concrete_fields
        places = [[f.attname for f in fields].index(attname) for attname in attnames]
        plan = _plans[connection.alias] = (attnames, places, len(fields), converters)
    attnames, places, width, converters = plan
    signalled = pre_init.has_listeners(Job) or post_init.has_listeners(Job)
    alias = connection.alias
    jobs = []
    for row in rows:
        if converters:
            row = list(row)
            for pos, convert in converters:
                value = row[pos]
                if value is not None:  # a NULL stays None through every converter
                    row[pos] = convert(value)
        if signalled:  # as Model.from_db: the values in field order, the columns not claimed deferred
            values = [DEFERRED] * width
            for place, value in zip(places, row, strict=True):
                values[place] = value
            job = Job(*values)
            job._state.adding = False
            job._state.db = alias
        else:
            job = Job.__new__(Job)
            job.__dict__.update(zip(attnames, row, strict=True))
            job._state = ModelState()
            job._state.adding = False
            job._state.db = alias
        jobs.append(job)
    return jobs


def _converter(convs: list, expression):
    """One column's converters as a function of its value alone (the connection is the proxy, which
    resolves to the calling thread's)."""
    fast = _faster(convs)
    if fast is not None:
        return fast
    if len(convs) == 1:
        convert = convs[0]
        return lambda value: convert(value, expression, connection)

    def chain(value):
        for convert in convs:
            value = convert(value, expression, connection)
        return value

    return chain


def _faster(convs: list):
    """SQLite's converters for the claimed columns, with the same results for the values the queue
    stores, at a fraction of the cost (the claim loop converts some twenty values a job), or None:

    - a timestamp: Django's converter (a regular expression, then make_aware: 6 us) replaced by the
      C ``fromisoformat`` for the text Django stores, naive UTC (the claim returns it as text, see
      CLAIMED_SQLITE);
    - a JSON column (no custom decoder): ``json.loads`` straight, and ``[]`` (a job's errors until it
      fails) without the parser;
    - a boolean: SQLite's 0 or 1 as a bool.

    Anything else goes through Django's own."""
    if is_postgres() or connection.timezone is not UTC:
        return None
    ops = connection.ops
    if convs == [ops.convert_datetimefield_value]:
        django_converter = convs[0]

        def utc_text(value):
            try:  # the naive UTC text Django stores, made aware by the parser (replace() costs 4x)
                return datetime.fromisoformat(value + "+00:00")
            except (TypeError, ValueError):  # a datetime, or a text with an offset
                return django_converter(value, None, connection)

        return utc_text
    if convs == [ops.convert_booleanfield_value]:
        return lambda value: bool(value) if value in (0, 1) else value
    if len(convs) == 1 and getattr(convs[0], "__func__", None) is JSONField.from_db_value:
        field = convs[0].__self__
        if field.decoder is None:

            def json_text(value):
                if value.__class__ is not str:
                    return field.from_db_value(value, None, connection)
                if value == "[]":
                    return []
                try:
                    return json.loads(value)
                except json.JSONDecodeError:  # as Django's: the text as it is
                    return value

            return json_text
    return None


def prepare_claim() -> datetime:
    """First statement of a claim transaction; returns the database's clock (see now()), by which the
    claim decides what is due and stamps its jobs.

    The planner must walk the pending-jobs index in claim order and stop at LIMIT. Right after a bulk
    enqueue its statistics still say "a dozen pending rows", and it would rather bitmap-scan and sort
    every pending job on each claim (milliseconds per claim, growing with the queue); sorts and bitmap
    scans are switched off for this transaction only. The commit is relaxed as in relax_commit(), and
    statements are bounded as in bound_time(). One round trip for all of it.
    """
    if not is_postgres():
        return timezone.now()
    relaxed = "off" if conf.get("JOBS_RELAXED_COMMIT") else "on"
    limit = timeout_ms()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true),"
            " set_config('synchronous_commit', %s, true), set_config('statement_timeout', %s, true),"
            " set_config('lock_timeout', %s, true), statement_timestamp()",
            [relaxed, limit, limit],
        )
        return cursor.fetchone()[-1]


def bound_time() -> None:
    """Bound every statement of the current transaction, and every lock wait, by JOBS_DB_TIMEOUT
    (PostgreSQL): a heartbeat or a claim stuck behind a lock errors within seconds, and the worker's
    loop backs off and keeps telling systemd's watchdog it is alive instead of hanging."""
    if is_postgres():
        limit = timeout_ms()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                [limit, limit],
            )


def claim_keyed_ids(*, limit: int, **options) -> list[int]:
    """Claim concurrency-keyed jobs one statement per job, under a lock, so that each claim counts the
    ones before it: a single statement would see the same running count for every candidate row. None
    while another worker's claim holds the lock (see lock_keyed_claims)."""
    if not lock_keyed_claims():
        return []
    ids: list[int] = []
    expired = options.setdefault("expired", [])
    while len(ids) < limit:
        before = len(expired)
        got = claim_ids(limit=1, keyed=True, **options)
        if not got and len(expired) == before:
            break
        ids += got
    return ids


def lock_keyed_claims() -> bool:
    """Serialise claims of concurrency-keyed jobs across workers for the rest of the transaction; False
    if another worker's claim holds the lock: this claim leaves the keyed jobs to that one, and the
    next claim tries again.

    A transaction-level advisory lock (safe behind PgBouncer's transaction pooling), never waited for:
    the holder may be a host cut off in the middle of its claim, whose session lives on the server
    until its keepalives give up (20 s by default), and every worker waiting behind it had its whole
    claim, unkeyed jobs included, time out and reported the database unavailable (tests/hosts). SQLite's
    IMMEDIATE transactions are already serial.
    """
    return _try_lock("SELECT pg_try_advisory_xact_lock(%s)", [0x6A6F6273])


def lock_name(name: str) -> bool:
    """A transaction-level lock on an arbitrary name (rate-limit buckets), or False if another
    transaction holds it (never waited for, as in lock_keyed_claims). Always True on SQLite."""
    return _try_lock("SELECT pg_try_advisory_xact_lock(hashtext(%s))", [name])


def _try_lock(sql: str, params: list) -> bool:
    if not is_postgres():
        return True
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return bool(cursor.fetchone()[0])


def skip_locked(queryset):
    """``queryset`` locking its rows for this transaction and passing over rows another transaction
    holds (PostgreSQL ``FOR UPDATE SKIP LOCKED``: two reapers or schedulers never take the same row).
    SQLite needs nothing: its IMMEDIATE transactions already run one at a time."""
    return queryset.select_for_update(skip_locked=True) if is_postgres() else queryset
