"""A workflow's jobs and the dependencies among them, stored in one statement (PostgreSQL) or two
(SQLite), for ``jobs.api.enqueue_workflow``.

An order's pipeline (four jobs, four dependencies) stored job by job cost eleven statements and two
savepoints inside the transaction that marks the order paid; this way it costs one, with one NOTIFY
per queue. A job whose ``unique_key`` is held by an unfinished job is skipped by ``ON CONFLICT DO
NOTHING`` (no error, so no savepoint); the caller then takes back what was stored (``discard``) so a
workflow is stored whole or not at all.
"""

import json
from datetime import datetime

from django.db import connection

from jobs import conf
from jobs.db.base import NOTIFY_CHANNEL, dt, is_postgres

# Every column a workflow's job sets, with its PostgreSQL type; the rest take the defaults below.
_COLUMNS = {
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
    "unique_key": "text",
    "waiting_on": "int",
}
_JSON = ("payload", "trace_context", "tags", "meta")
_DEFAULTS = "status_reason, attempts, errors, cancel_requested, snoozes"


def insert_workflow(jobs: list, edges: list[tuple[int, int]]) -> list[int] | None:
    """Insert unsaved ``jobs`` (status and waiting_on already set) and the dependencies ``edges``
    between them, (parent, child) positions in ``jobs``; wake PostgreSQL's listeners of the queues of
    the pending ones. Returns the jobs' ids in order, or None if a unique key was held: then on
    PostgreSQL the jobs whose keys were free are stored, with no dependency, and carry their pk for
    ``discard``; SQLite, which cannot tell which job got which id once one was skipped, has already
    deleted them."""
    postgres = is_postgres()
    document = json.dumps([[_value(getattr(job, n), n, postgres) for n in _COLUMNS] for job in jobs])
    return _postgres(jobs, edges, document) if postgres else _sqlite(jobs, edges, document)


def _value(value, name: str, postgres: bool):
    if isinstance(value, datetime):
        return value.isoformat() if postgres else dt(value)
    if not postgres and name in _JSON and value is not None:
        # SQLite keeps JSON as text and the ORM compares it as text (``payload={...}``): stored as the
        # ORM writes it, not as json() would rewrite it.
        return json.dumps(value)
    return value


def _postgres(jobs: list, edges: list[tuple[int, int]], document: str) -> list[int] | None:
    # The ids are drawn first, so that the dependencies can name them in the same statement.
    select = ", ".join(
        f"(r.value -> {at})" if kind == "jsonb" else f"(r.value ->> {at})::{kind}"
        for at, kind in enumerate(_COLUMNS.values())
    )
    notify = conf.get("JOBS_LISTEN_NOTIFY")
    wake = (
        ", (SELECT count(pg_notify(%s, q)) FROM (SELECT DISTINCT queue AS q FROM ins"
        " WHERE status = 'pending') AS pending)"
        if notify
        else ""
    )
    sql = (
        "WITH r AS (SELECT n, value, nextval(pg_get_serial_sequence('jobs_job', 'id')) AS id"
        " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(value, n)),"
        f" ins AS (INSERT INTO jobs_job (id, {', '.join(_COLUMNS)}, {_DEFAULTS})"
        f" SELECT r.id, {select}, '', 0, '[]'::jsonb, false, 0 FROM r ORDER BY r.n"
        " ON CONFLICT DO NOTHING RETURNING id, queue, status),"
        ' deps AS (INSERT INTO jobs_jobdependency (parent_id, child_id, "when")'
        " SELECT p.id, c.id, 'succeeded' FROM jsonb_array_elements(%s::jsonb) AS e"
        " JOIN r AS p ON p.n = (e ->> 0)::int JOIN r AS c ON c.n = (e ->> 1)::int"
        " WHERE (SELECT count(*) FROM ins) = %s)"
        f" SELECT (SELECT array_agg(r.id ORDER BY r.n) FROM r),"
        f" (SELECT array_agg(id) FROM ins){wake}"
    )
    params = [document, json.dumps([[p + 1, c + 1] for p, c in edges]), len(jobs)]
    if notify:
        params.append(NOTIFY_CHANNEL)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        drawn, stored = cursor.fetchone()[:2]
    stored = set(stored or ())
    for job, pk in zip(jobs, drawn, strict=True):
        if pk in stored:
            _saved(job, pk)
    return list(drawn) if len(stored) == len(jobs) else None


def _sqlite(jobs: list, edges: list[tuple[int, int]], document: str) -> list[int] | None:
    select = ", ".join(f"json_extract(r.value, '$[{at}]')" for at in range(len(_COLUMNS)))
    # The WHERE clause keeps SQLite's parser from reading ON CONFLICT as a join's ON.
    sql = (
        f"INSERT INTO jobs_job ({', '.join(_COLUMNS)}, {_DEFAULTS}) SELECT {select}, '', 0, '[]', 0, 0"
        " FROM json_each(%s) AS r WHERE true ORDER BY r.key ON CONFLICT DO NOTHING RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [document])
        ids = sorted(row[0] for row in cursor.fetchall())
        if len(ids) != len(jobs):
            # Which job got which id is unknown once one was skipped: take them all back here.
            _delete(cursor, ids)
            return None
        for job, pk in zip(jobs, ids, strict=True):
            _saved(job, pk)
        if edges:
            values = ", ".join(["(%s, %s, 'succeeded')"] * len(edges))
            cursor.execute(
                f'INSERT INTO jobs_jobdependency (parent_id, child_id, "when") VALUES {values}',
                [ids[i] for edge in edges for i in edge],
            )
    return ids


def discard(jobs: list) -> None:
    """Delete the stored jobs of a workflow that could not be stored whole (they have no dependencies
    yet), and forget their ids."""
    stored = [job for job in jobs if job.pk is not None]
    with connection.cursor() as cursor:
        _delete(cursor, [job.pk for job in stored])
    for job in stored:
        job.pk = None
        job._state.adding = True


def _delete(cursor, ids: list[int]) -> None:
    if ids:
        cursor.execute(f"DELETE FROM jobs_job WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)


def _saved(job, pk: int) -> None:
    job.pk = pk
    job._state.adding = False
    job._state.db = connection.alias


def child_ids(parent_ids: list[int]) -> list[int]:
    """The children of these jobs, once per dependency (a child of two of them twice). Asked for every
    batch of successes the worker records, nearly always of jobs with none: on PostgreSQL one array
    parameter, not the ORM's IN list (each id prepared on its own, a sixth of the completer's time in
    a drain of no-op jobs)."""
    if not parent_ids:
        return []
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(
                "SELECT child_id FROM jobs_jobdependency WHERE parent_id = ANY(%s::bigint[])", [parent_ids]
            )
        else:
            cursor.execute(
                "SELECT child_id FROM jobs_jobdependency"
                " WHERE parent_id IN (SELECT value FROM json_each(%s))",
                [json.dumps(parent_ids)],
            )
        return [row[0] for row in cursor.fetchall()]
