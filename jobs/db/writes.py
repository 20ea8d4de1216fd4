"""Statements that write job rows in bulk or in one round trip: the enqueue's insert, the batched
completion and heartbeat (each fenced by the lock token), the pruner's delete, the statistics upsert,
and the planner's row estimate the dashboard reads."""

import json
from datetime import datetime

from django.db import connection
from django.db.models.sql import InsertQuery
from django.utils import timezone

from jobs import conf
from jobs.db.base import NOTIFY_CHANNEL, dt, is_postgres
from jobs.models import Job

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
    "fair_key": "text",
    "trace_context": "jsonb",
    "tags": "jsonb",
    "meta": "jsonb",
    "expires_at": "timestamptz",
    "requeued_from_id": "bigint",  # a dead letter's id (api.requeue_many)
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
        if not postgres and name in ("run_at", "created_at", "expires_at"):
            column = [dt(v) for v in column]
        values[name] = column
    varying = [n for n in _BULK_COLUMNS if n == "payload" or any(v != values[n][0] for v in values[n])]
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
            value = values[name][0]
            if isinstance(value, dict | list):  # the same trace context or tags for all: one JSON text
                select.append("%s::jsonb" if postgres else "json(%s)")
                params.append(json.dumps(value))
            else:
                select.append(f"%s::{kind}" if postgres else "%s")
                params.append(value)
    if postgres:
        source = "jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(value, n) ORDER BY r.n"
        defaults = "'', 0, '[]'::jsonb, 0, false, 0"
    else:
        source = "json_each(%s) AS r ORDER BY r.key"
        defaults = "'', 0, '[]', 0, 0, 0"
    sql = (
        f"INSERT INTO jobs_job ({', '.join(_BULK_COLUMNS)}, status_reason, attempts, errors, waiting_on,"
        f" cancel_requested, snoozes) SELECT {', '.join(select)}, {defaults} FROM {source} RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, rows])
        ids = sorted(row[0] for row in cursor.fetchall())
    for job, pk in zip(jobs, ids, strict=True):
        job.pk = pk
        job._state.adding = False
    return ids


_JSON_COLUMNS = ("payload", "trace_context", "tags", "meta")


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
        # The rows are locked in the order of their ids (ORDER BY ... FOR UPDATE), as the heartbeat locks
        # them: two statements of one worker's threads that lock the same running jobs in two orders
        # deadlock (seen: the completer's batch and the claim loop's heartbeat, in a 1,000,000-job run).
        sql = (
            f"UPDATE jobs_job SET {set_done} FROM (SELECT jobs_job.id, v.result FROM jobs_job JOIN"
            " (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS token,"
            f" unnest(%s::text[])::jsonb AS result) AS v ON {fence} ORDER BY jobs_job.id"
            " FOR UPDATE OF jobs_job) AS v WHERE jobs_job.id = v.id RETURNING jobs_job.id"
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
        sql = (  # locked in the order of their ids, as complete_sql locks them
            "UPDATE jobs_job SET heartbeat_at = statement_timestamp() FROM (SELECT jobs_job.id FROM jobs_job"
            " JOIN (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS token) AS v"
            " ON jobs_job.id = v.id AND jobs_job.lock_token = v.token AND jobs_job.status = 'running'"
            " ORDER BY jobs_job.id FOR UPDATE OF jobs_job) AS v WHERE jobs_job.id = v.id"
            " RETURNING jobs_job.id, jobs_job.cancel_requested"
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


def estimated_rows(table: str) -> int | None:
    """The planner's row estimate for ``table`` on PostgreSQL (no count of a million rows), else None."""
    if not is_postgres():
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return int(row[0]) if row else None
