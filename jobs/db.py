"""The queue's concurrency contract, in one file: every vendor difference and every statement written
as SQL (the claim, completion, NOTIFY/LISTEN, the reaper's and scheduler's row locks, the statistics
upsert, the row estimate, parameter adaptation). Anyone reviewing locking reads this file; no other
module of ``jobs`` opens a cursor or asks which database it runs on beyond ``is_postgres()``.

PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets many workers claim side by side without waiting on each
other. SQLite: every transaction is ``BEGIN IMMEDIATE`` (see settings; the system check jobs.E001
refuses a database without it), so a claim holds the single write lock from its first statement and
two claims can never interleave.
"""

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import connection
from django.db.models.functions import Now
from django.db.models.sql import InsertQuery
from django.utils import timezone

from jobs import conf
from jobs.models import Job

NOTIFY_CHANNEL = "jobs_enqueued"


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def now() -> datetime:
    """The database's clock: the time every decision about ownership and due times is made by, so that
    hosts whose clocks disagree agree on it. On PostgreSQL the server's ``statement_timestamp()``; a
    SQLite file is only ever shared by processes on one host, whose clock is its clock."""
    if not is_postgres():
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def now_value():
    """The database's clock as a value for an ORM update or filter, read by the database itself (no
    round trip): ``statement_timestamp()`` on PostgreSQL, this host's clock for SQLite (see now())."""
    return Now() if is_postgres() else timezone.now()


def dt(value: datetime):
    """A datetime as a raw-SQL parameter, stored exactly as the ORM stores it (naive UTC text on SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


def _in_list(column: str, values: Sequence, params: list) -> str:
    params.extend(values)
    return f"{column} IN ({', '.join(['%s'] * len(values))})"


def _claim_sql(
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
) -> tuple[str, list]:
    where = [
        "j.status = 'pending'",
        "j.run_at <= %s",
        "j.queue NOT IN (SELECT q.name FROM jobs_queuestate q WHERE q.paused)",
    ]
    params: list = [dt(now)]
    if queues:
        where.append(_in_list("j.queue", queues, params))
    if types:
        where.append(_in_list("j.type", types, params))
    if exclude_types:
        where.append("NOT " + _in_list("j.type", exclude_types, params))
    if above_priority is not None:
        where.append("j.priority > %s")
        params.append(above_priority)
    if keyed:
        where.append("j.concurrency_key IS NOT NULL")
        where.append(
            "(SELECT COUNT(*) FROM jobs_job r WHERE r.status = 'running'"
            " AND r.concurrency_key = j.concurrency_key) < COALESCE(j.concurrency_limit, 1)"
        )
    else:
        where.append("j.concurrency_key IS NULL")
    condition = " AND ".join(where)
    set_running = (
        "status = 'running', attempts = attempts + 1, locked_by = %s, lock_token = %s,"
        " started_at = %s, heartbeat_at = %s, progress = NULL"
    )
    set_params = [worker_id, token, dt(now), dt(now)]
    if is_postgres():
        sql = (
            f"WITH locked AS (SELECT j.id FROM jobs_job j WHERE {condition}"
            " ORDER BY j.priority DESC, j.run_at, j.id LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" UPDATE jobs_job SET {set_running} FROM locked"
            f" WHERE jobs_job.id = locked.id RETURNING jobs_job.{returning}"
        )
        return sql, params + [limit] + set_params
    # Without statistics SQLite would rather sort every pending row found through (status, finished_at);
    # the partial index is already in claim order, so name it.
    sql = (
        f"UPDATE jobs_job SET {set_running} WHERE id IN (SELECT j.id FROM jobs_job AS j"
        f" INDEXED BY jobs_job_claim_idx WHERE {condition}"
        f" ORDER BY j.priority DESC, j.run_at, j.id LIMIT %s) RETURNING {returning}"
    )
    return sql, set_params + params + [limit]


def claim_ids(**options) -> list[int]:
    """Mark up to ``limit`` due pending jobs running for ``worker_id`` and return their ids.

    Runs inside the caller's transaction. Order: priority desc, run_at, id. ``keyed`` selects jobs
    with a concurrency key (see claim_keyed_ids); otherwise only jobs without one are considered.
    """
    sql, params = _claim_sql(**options)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def claim_jobs(**options) -> list:
    """The common claim as one statement returning whole rows (inside the caller's transaction)."""
    sql, params = _claim_sql(returning="*", **options)
    return list(Job.objects.raw(sql, params))


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
    limit = _timeout_ms()
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
        limit = _timeout_ms()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                [limit, limit],
            )


def _timeout_ms() -> str:
    return str(int(conf.get("JOBS_DB_TIMEOUT") * 1000))


def claim_keyed_ids(*, limit: int, **options) -> list[int]:
    """Claim concurrency-keyed jobs one statement per job, under a lock, so that each claim counts the
    ones before it: a single statement would see the same running count for every candidate row. None
    while another worker's claim holds the lock (see lock_keyed_claims)."""
    if not lock_keyed_claims():
        return []
    ids: list[int] = []
    while len(ids) < limit:
        got = claim_ids(limit=1, keyed=True, **options)
        if not got:
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


def notify(queues: Iterable[str]) -> None:
    """Wake listening workers when the current transaction commits (PostgreSQL drops it on rollback)."""
    if not is_postgres() or not conf.get("JOBS_LISTEN_NOTIFY"):
        return
    with connection.cursor() as cursor:
        for queue in sorted(set(queues)):
            cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue])


def skip_locked(queryset):
    """``queryset`` locking its rows for this transaction and passing over rows another transaction
    holds (PostgreSQL ``FOR UPDATE SKIP LOCKED``: two reapers or schedulers never take the same row).
    SQLite needs nothing: its IMMEDIATE transactions already run one at a time."""
    return queryset.select_for_update(skip_locked=True) if is_postgres() else queryset


def estimated_rows(table: str) -> int | None:
    """The planner's row estimate for ``table`` on PostgreSQL (no count of a million rows), else None."""
    if not is_postgres():
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return int(row[0]) if row else None


def delete_jobs(ids: list[int]) -> None:
    """Delete these job rows in one statement, nothing read back (the pruner has already done what
    their references' on_delete asks)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Job._meta.db_table} WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)


def add_job_stats(counts: dict[tuple[str, str, str], list]) -> None:
    """Add per (type, outcome, duration bucket) counts and seconds to jobs_jobstat in one upsert."""
    rows = sorted(counts.items())
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    params = [v for (t, o, b), (n, s) in rows for v in (t, o, b, n, s)]
    sql = (
        f"INSERT INTO jobs_jobstat (type, outcome, bucket, count, seconds) VALUES {values}"
        " ON CONFLICT (type, outcome, bucket) DO UPDATE SET count = jobs_jobstat.count + excluded.count,"
        " seconds = jobs_jobstat.seconds + excluded.seconds"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def listen(stopping, on_notify, on_listening) -> None:
    """LISTEN on the enqueue channel over a connection of its own (PostgreSQL) until ``stopping`` is
    set: ``on_listening()`` once listening (anything enqueued before was not heard), then
    ``on_notify(queue)`` for each enqueue's notification. Raises the connection's error when it is
    lost (the caller backs off and listens again)."""
    import psycopg  # PostgreSQL only: a SQLite install never listens

    with psycopg.connect(**listen_conninfo()) as conn:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        on_listening()
        while not stopping.is_set():
            for note in conn.notifies(timeout=1.0):
                on_notify(note.payload)


def listen_errors() -> tuple[type[BaseException], ...]:
    """What a lost LISTEN connection raises."""
    import psycopg
    from django.db import DatabaseError

    return (psycopg.Error, DatabaseError)


def listen_conninfo() -> dict:
    """psycopg.connect() keyword arguments for the database Django uses (for the LISTEN connection)."""
    s = connection.settings_dict
    params = {"dbname": s["NAME"], "autocommit": True}
    for key, name in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"), ("PORT", "port")):
        if s.get(key):
            params[name] = s[key]
    # The connection's libpq options (timeouts, keepalives, sslmode...), not Django's own keys.
    django_keys = {"isolation_level", "server_side_binding", "assume_role", "pool", "cursor_factory"}
    params.update({k: v for k, v in s.get("OPTIONS", {}).items() if k not in django_keys})
    return params


# Columns enqueue_many sets, with their PostgreSQL types; the rest take the defaults in the statement.
_BULK_COLUMNS = {
    "type": "text",
    "queue": "text",
    "payload": "jsonb",
    "payload_version": "int",
    "status": "text",
    "priority": "int",
    "run_at": "timestamptz",
    "max_attempts": "int",
    "created_at": "timestamptz",
    "concurrency_key": "text",
    "concurrency_limit": "int",
    "trace_context": "jsonb",
}


def bulk_insert_jobs(jobs: list) -> list[int]:
    """Insert unsaved jobs in one statement and return their ids (in order).

    A column with one value for every job (the type, queue, run_at... of an ``enqueue_many`` call)
    travels once as a parameter; the payloads, and any other column that varies, travel as one JSON
    document unpacked by the database (jsonb_array_elements / json_each), which is cheaper to build
    and to parse than an escaped text array per column, and keeps SQLite under its parameter cap.
    """
    postgres = is_postgres()
    values = {}
    for name in _BULK_COLUMNS:
        column = [getattr(j, name) for j in jobs]
        if not postgres and name in ("run_at", "created_at"):
            column = [dt(v) for v in column]
        values[name] = column
    # A dict (a trace context) cannot be one parameter: it travels in the document like the payload.
    varying = [
        n
        for n in _BULK_COLUMNS
        if n == "payload" or isinstance(values[n][0], dict) or any(v != values[n][0] for v in values[n])
    ]
    # default=: a varying datetime (PostgreSQL; SQLite's are text already) as ISO 8601, with its offset
    rows = json.dumps([[values[n][i] for n in varying] for i in range(len(jobs))], default=_iso)
    select, params = [], []
    for name, kind in _BULK_COLUMNS.items():
        if name in varying:
            at = varying.index(name)
            if postgres:
                item = f"(r.value -> {at})" if kind == "jsonb" else f"(r.value ->> {at})::{kind}"
            else:
                item = f"json_extract(r.value, '$[{at}]')"
                item = f"json({item})" if name in _JSON_COLUMNS else item
            select.append(item)
        else:
            select.append(f"%s::{kind}" if postgres else "%s")
            params.append(values[name][0])
    if postgres:
        source = "jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(value, n) ORDER BY r.n"
        defaults = "'', 0, '[]'::jsonb, 0, false"
    else:
        source = "json_each(%s) AS r ORDER BY r.key"
        defaults = "'', 0, '[]', 0, 0"
    sql = (
        f"INSERT INTO jobs_job ({', '.join(_BULK_COLUMNS)}, status_reason, attempts, errors, waiting_on,"
        f" cancel_requested) SELECT {', '.join(select)}, {defaults} FROM {source} RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, rows])
        ids = sorted(row[0] for row in cursor.fetchall())
    for job, pk in zip(jobs, ids, strict=True):
        job.pk = pk
        job._state.adding = False
    return ids


_JSON_COLUMNS = ("payload", "trace_context")


def _iso(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def relax_commit() -> None:
    """Let PostgreSQL acknowledge this transaction's commit before its WAL is flushed to disk.

    Used for claims and completions only, never for enqueues: if the database server crashes, the last
    few milliseconds of these transitions may be forgotten, so a claimed job is pending again or a
    finished job runs once more. Delivery is at least once anyway and handlers are idempotent, so
    nothing is lost; in exchange a claim or a batch of completions does not wait for an fsync.
    """
    if is_postgres() and conf.get("JOBS_RELAXED_COMMIT"):
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def complete_ids(items: list[tuple[int, str, object]], now: datetime) -> list[int]:
    """Mark running jobs succeeded with their results in one statement, each fenced by its lock token
    and skipped if its cancellation was requested; returns the ids it changed."""
    if not items:
        return []
    sql, params = complete_sql(items, now)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def complete_sql(items: list[tuple[int, str, object]], now: datetime) -> tuple[str, list]:
    """The statement of :func:`complete_ids`, and its parameters."""
    results = [None if r is None else json.dumps(r) for _, _, r in items]
    set_done = (
        "status = 'succeeded', result = v.result, finished_at = %s, locked_by = NULL, lock_token = NULL,"
        " heartbeat_at = NULL, progress = 100"
    )
    # SQLite must walk the batch and look each job up by id. Left to itself it walks every running
    # job through the status index and re-reads the whole batch for each (58 ms for 100 jobs among
    # 1,000 running, 1 ms this way); a unary + keeps it off those indexes.
    plus = "" if is_postgres() else "+"
    fence = (
        f"jobs_job.id = v.id AND {plus}jobs_job.lock_token = v.token AND {plus}jobs_job.status = 'running'"
        " AND NOT jobs_job.cancel_requested"
    )
    if is_postgres():
        sql = (
            f"UPDATE jobs_job SET {set_done} FROM (SELECT unnest(%s::bigint[]) AS id,"
            " unnest(%s::text[]) AS token, unnest(%s::text[])::jsonb AS result) AS v"
            f" WHERE {fence} RETURNING jobs_job.id"
        )
        params = [dt(now), [i for i, _, _ in items], [t for _, t, _ in items], results]
    else:
        sql = (
            f"UPDATE jobs_job SET {set_done} FROM (SELECT json_extract(value, '$[0]') AS id,"
            " json_extract(value, '$[1]') AS token, json_extract(value, '$[2]') AS result FROM json_each(%s))"
            f" AS v WHERE {fence} RETURNING jobs_job.id"
        )
        params = [dt(now), json.dumps([[i, t, r] for (i, t, _), r in zip(items, results, strict=True)])]
    return sql, params


def heartbeat_jobs(items: list[tuple[int, str]]) -> dict[int, bool]:
    """Stamp the running jobs still held under these lock tokens with the database's clock, in one
    statement; returns ``{id: cancellation requested}`` for those. A job missing from the answer is no
    longer ours: it finished, or was reaped and perhaps claimed by another worker."""
    if not items:
        return {}
    if is_postgres():
        sql = (
            "UPDATE jobs_job SET heartbeat_at = statement_timestamp()"
            " FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS token) AS v"
            " WHERE jobs_job.id = v.id AND jobs_job.lock_token = v.token"
            " AND jobs_job.status = 'running' RETURNING jobs_job.id, jobs_job.cancel_requested"
        )
        params = [[i for i, _ in items], [t for _, t in items]]
    else:  # the unary + as in complete_sql: each job looked up by id
        sql = (
            "UPDATE jobs_job SET heartbeat_at = %s FROM (SELECT json_extract(value, '$[0]') AS id,"
            " json_extract(value, '$[1]') AS token FROM json_each(%s)) AS v WHERE jobs_job.id = v.id"
            " AND +jobs_job.lock_token = v.token AND +jobs_job.status = 'running'"
            " RETURNING jobs_job.id, jobs_job.cancel_requested"
        )
        params = [dt(timezone.now()), json.dumps(items)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0]: bool(row[1]) for row in cursor.fetchall()}


_insert_sql: dict[tuple, str] = {}


def insert_job(job, *, unless_key_taken: bool = False) -> bool:
    """Insert one job in one statement, queueing its NOTIFY in that statement on PostgreSQL when it is
    pending: one round trip, so an enqueue outside a transaction costs what a plain INSERT does.

    ``unless_key_taken``: when an unfinished job already holds the job's ``unique_key`` nothing is
    inserted (``ON CONFLICT DO NOTHING``: no error, so no savepoint is needed) and False is returned.
    On PostgreSQL a concurrent insert of the same key waits for the other transaction to end.
    """
    model = type(job)
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    notify = is_postgres() and conf.get("JOBS_LISTEN_NOTIFY")
    key = (connection.alias, notify, unless_key_taken)
    sql = _insert_sql.get(key)
    if sql is None:
        # The statement's text is the same for every job (placeholders only): compile it once.
        query = InsertQuery(model)
        query.insert_values(fields, [job])
        ((insert, _),) = query.get_compiler(connection=connection).as_sql()
        if unless_key_taken:
            insert += " ON CONFLICT DO NOTHING"  # the only unique index a new row can hit: unique_key's
        if notify:
            sql = (
                f"WITH ins AS ({insert} RETURNING id, queue, status)"
                " SELECT id, CASE WHEN status = 'pending' THEN pg_notify(%s, queue) END FROM ins"
            )
        else:
            sql = f"{insert} RETURNING id"
        _insert_sql[key] = sql
    # What the compiler does per value: pre_save (auto_now_add) then the database's form of it.
    params = [f.get_db_prep_save(f.pre_save(job, True), connection) for f in fields]
    if notify:
        params.append(NOTIFY_CHANNEL)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    job.pk = row[0]
    job._state.adding = False
    job._state.db = connection.alias
    return True
