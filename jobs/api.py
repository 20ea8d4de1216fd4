"""The public API of the queue: declare job types, enqueue jobs, cancel and requeue them, ask why one
waits (``explain``).

from jobs.api import HIGH, PermanentError, enqueue, job
"""

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from jobs import conf, db, execution, rows, signals
from jobs.db import tagged
from jobs.engine import cancel, run_now
from jobs.exceptions import InvalidPayload, JobCancelled, PermanentError, Snooze, UnknownJobType
from jobs.execution import JobContext
from jobs.explain import Reason, explain
from jobs.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    DeadLetter,
    DependsWhen,
    Job,
    JobDependency,
    JobStatus,
    Priority,
)
from jobs.registry import Backoff, Breaker, RateLimit, get_job_type, job, validate_payload

LOW, NORMAL, HIGH, CRITICAL = Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "Backoff",
    "Breaker",
    "InvalidPayload",
    "JobContext",
    "JobCancelled",
    "PermanentError",
    "Priority",
    "RateLimit",
    "Reason",
    "Snooze",
    "UnknownJobType",
    "cancel",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "explain",
    "job",
    "prepare",
    "requeue",
    "run_now",
    "tagged",
]


def enqueue(
    job_type: str,
    payload: Any = None,
    *,
    delay: timedelta | float | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
    queue: str | None = None,
    unique_key: str | None = None,
    max_attempts: int | None = None,
    tags: Iterable[str] | None = None,
    meta: dict | None = None,
    expires_in: timedelta | float | None = None,
    then: Sequence[Job] | Job | None = None,
    depends_on: Iterable[Job | int] | None = None,
    when: str = DependsWhen.SUCCEEDED,
    on_conflict: str = "keep",
    max_wait: timedelta | float | None = None,
    _payload_version: int | None = None,
    _requeued_from: DeadLetter | None = None,
) -> Job:
    """Store a job; it joins the caller's transaction, so a rollback leaves no job.

    ``then``: jobs built with :func:`prepare` that run after this one succeeds (fan-out); a job passed
    in several parents' ``then`` waits for all of them (fan-in). ``depends_on``: existing jobs this one
    waits for: until each succeeded (``when="succeeded"``, a dead or cancelled parent cancels this job),
    or until each finished whatever its outcome (``when="finished"``).

    ``unique_key``: while an unfinished job holds the key, the existing job is returned. With
    ``on_conflict="replace"`` (debounce) an existing job not started yet (pending or blocked) takes
    this call's payload and run_at, never later than ``max_wait`` after that job was first enqueued
    (its created_at); a running job, or another type's job, holding the key is returned unchanged
    (the unique key covers running jobs too, so no second job is queued behind it).
    ``tags`` (strings staff filter and search by) and ``meta`` (a JSON object) are stored on the job.
    ``expires_in``: a job not claimed within that long of being due (``run_at``) is cancelled with
    the reason ``expired``, never run late (default: the type's ``expires``).
    Raises UnknownJobType or InvalidPayload (nothing stored), ValueError for a bad option.
    """
    rows.check_options(unique_key, depends_on, when, on_conflict, max_wait)
    jt = get_job_type(job_type)
    new = rows.build(
        jt,
        {} if payload is None else payload,
        delay=delay,
        run_at=run_at,
        priority=priority,
        queue=queue,
        unique_key=unique_key,
        max_attempts=max_attempts,
        payload_version=_payload_version,
        tags=tags,
        meta=meta,
        expires_in=expires_in,
    )
    new.requeued_from = _requeued_from
    parents = list(depends_on or ())
    if unique_key is None and not parents and not then:
        db.insert_job(new)  # one statement: atomic by itself, or part of the caller's transaction
        signals.send(signals.job_enqueued, new)
        _run_immediately()
        return _refreshed(new)
    with transaction.atomic():
        for _ in range(3):
            if _insert(new, parents, when):
                break
            # An unfinished job holds the key (the unique index decides, races included): it stands.
            if on_conflict == "replace":
                existing = rows.replace(new, max_wait)
            else:
                existing = Job.objects.filter(unique_key=unique_key, status__in=ACTIVE_STATUSES).first()
            if existing is not None:
                return existing
            # It finished between the insert and this look: the key is free again, try once more.
        else:
            raise IntegrityError(f"unique_key {unique_key!r} stays taken by jobs finishing meanwhile")
        children = [then] if isinstance(then, Job) else list(then or ())
        fresh = [child for child in children if child.pk is None]  # a fan-in child was stored before
        for child in children:
            _attach_child(new, child)
        for stored in (new, *fresh):
            signals.send(signals.job_enqueued, stored)
    _run_immediately()
    return _refreshed(new)


_held = threading.local()


def runs_immediately() -> bool:
    """Immediate mode (``JOBS_IMMEDIATE``): jobs run inline as they are enqueued."""
    return bool(conf.get("JOBS_IMMEDIATE"))


@contextmanager
def immediate_after() -> Iterator[None]:
    """In immediate mode, run what is enqueued inside the block when the block ends instead of at each
    enqueue: the Tasks backend tells the API a task was enqueued before the task starts."""
    if getattr(_held, "active", False):
        yield
        return
    _held.active = True
    try:
        yield
    finally:
        _held.active = False
    _run_immediately()


def _run_immediately() -> None:
    if runs_immediately() and not getattr(_held, "active", False):
        execution.drain()


def _refreshed(job: Job) -> Job:
    if conf.get("JOBS_IMMEDIATE"):
        job.refresh_from_db()
    return job


def _insert(job: Job, parents: list[Job | int], when: str = DependsWhen.SUCCEEDED) -> bool:
    """Store ``job`` waiting on ``parents``; False (nothing stored) if an unfinished job holds its key."""
    parent_ids = [p.pk if isinstance(p, Job) else int(p) for p in parents]
    waiting = 0
    if parent_ids:
        live = Job.objects.select_for_update().filter(id__in=parent_ids)
        states = dict(live.values_list("id", "status"))
        missing = set(parent_ids) - set(states)
        if missing:
            raise ValueError(f"depends_on names unknown job(s): {sorted(missing)}")
        done = (JobStatus.SUCCEEDED,) if when == DependsWhen.SUCCEEDED else FINISHED_STATUSES
        waiting = sum(1 for s in states.values() if s not in done)
        dead = [pid for pid, s in states.items() if s in (JobStatus.DEAD, JobStatus.CANCELLED)]
        if dead and when == DependsWhen.SUCCEEDED:
            job.status = JobStatus.CANCELLED
            job.status_reason = f"parent job #{dead[0]} did not succeed"
            job.finished_at = timezone.now()
    if waiting and job.status != JobStatus.CANCELLED:
        job.status = JobStatus.BLOCKED
        job.waiting_on = waiting
    if not db.insert_job(job, unless_key_taken=job.unique_key is not None):  # NOTIFY included
        return False
    if parent_ids:
        JobDependency.objects.bulk_create(
            [JobDependency(parent_id=p, child=job, when=when) for p in parent_ids]
        )
    return True


def prepare(job_type: str, payload: Any = None, **options) -> Job:
    """An unsaved job for ``then=``: validated now, stored (blocked) with its parent."""
    allowed = {
        "delay",
        "run_at",
        "priority",
        "queue",
        "unique_key",
        "max_attempts",
        "tags",
        "meta",
        "expires_in",
    }
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"prepare() got unexpected options {sorted(unknown)}")
    return rows.build(get_job_type(job_type), {} if payload is None else payload, **options)


def _attach_child(parent: Job, child: Job) -> None:
    if child.pk is None:
        child.status = JobStatus.BLOCKED
        child.waiting_on = 1
        child.save(force_insert=True)
    else:
        # Fan-in: the child already waits on another parent of this workflow.
        Job.objects.filter(pk=child.pk, status=JobStatus.BLOCKED).update(waiting_on=F("waiting_on") + 1)
    JobDependency.objects.create(parent=parent, child=child)


def enqueue_workflow(jobs: Sequence[Job], edges: Iterable[tuple[Job, Job]] = ()) -> list[Job]:
    """Store jobs built with :func:`prepare` and the dependencies among them, ``(parent, child)``
    pairs, in one INSERT with one NOTIFY (two statements on SQLite), in the caller's transaction: a
    child waits (blocked) until each of its parents succeeded, as with ``then=`` and ``depends_on``.

    A workflow is stored whole or not at all: if an unfinished job holds any of its jobs'
    ``unique_key``, nothing is stored and ``[]`` is returned (the workflow was enqueued before).
    Returns the stored jobs, in the order given. Raises ValueError for an edge naming a job not in
    ``jobs``, a job already stored, or a cycle (its jobs would wait forever).
    """
    jobs = list(jobs)
    if not jobs:
        return []
    pairs = rows.plan_workflow(jobs, edges)
    # No savepoint: on PostgreSQL the workflow is one statement; on SQLite two, made atomic together
    # when the caller has no transaction of its own.
    with transaction.atomic(savepoint=False):
        if db.insert_workflow(jobs, pairs) is None:
            db.discard_workflow(jobs)
            return []
        for stored in jobs:
            signals.send(signals.job_enqueued, stored)
    _run_immediately()
    return jobs


def enqueue_many(
    job_type: str,
    payloads: Iterable[Any],
    *,
    delay: timedelta | float | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
    queue: str | None = None,
    tags: Iterable[str] | None = None,
    meta: dict | None = None,
    expires_in: timedelta | float | None = None,
) -> list[Job]:
    """Validate every payload first, then insert all jobs in one statement (one NOTIFY). The options
    (``tags`` and ``meta`` included) are the same for every job."""
    jt = get_job_type(job_type)
    payloads = list(payloads)
    if not payloads:
        return []
    template = rows.build(
        jt,
        payloads[0],
        delay=delay,
        run_at=run_at,
        priority=priority,
        queue=queue,
        tags=tags,
        meta=meta,
        expires_in=expires_in,
    )
    # Positional construction from the first job's values: Django's fast path, no per-field defaults.
    names = [f.attname for f in Job._meta.concrete_fields]
    values = [getattr(template, name) for name in names]
    at_payload, at_errors, at_key, at_fair = (
        names.index("payload"),
        names.index("errors"),
        names.index("concurrency_key"),
        names.index("fair_key"),
    )
    jobs = [template]
    for payload in payloads[1:]:
        row = values.copy()
        row[at_payload] = validate_payload(jt, payload)
        row[at_errors] = []
        if jt.share_key is not None:
            model = jt.payload.model_validate(row[at_payload])
            if jt.concurrency_key is not None:
                row[at_key] = str(jt.concurrency_key(model))
            row[at_fair] = rows.share_key(jt, model)
        jobs.append(Job(*row))
    with transaction.atomic():
        for start in range(0, len(jobs), 1000):
            db.bulk_insert_jobs(jobs[start : start + 1000])
        db.notify({j.queue for j in jobs})
        if signals.job_enqueued.has_listeners(Job):
            for stored in jobs:
                signals.send(signals.job_enqueued, stored)
    _run_immediately()
    return jobs


def requeue_many(dead_letter_ids: Iterable[int]) -> list[Job]:
    """``requeue`` for a batch of dead letters (a bulk action): the open ones are locked and become
    fresh pending jobs in one insert, and are closed in one update, in the caller's transaction. One
    already closed, or whose payload no longer validates (or whose type is gone), is left open and
    out of the result. One ``requeue`` at a time costs six statements and two savepoints a dead letter
    (3,000 took 18 s on SQLite); this way 100,000 take 18 s, a batch of 1,000 a handful of statements."""
    with transaction.atomic():
        dead = list(
            DeadLetter.objects.select_for_update(of=("self",))
            .open()
            .filter(id__in=list(dead_letter_ids))
            .select_related("job")
        )
        jobs = []
        for letter in sorted(dead, key=lambda d: d.pk):
            try:
                new = rows.build(
                    get_job_type(letter.type),
                    letter.payload,
                    priority=letter.priority,
                    queue=letter.queue,
                    payload_version=letter.payload_version,
                    tags=letter.job.tags if letter.job is not None else None,  # found by its tags still
                    meta=letter.job.meta if letter.job is not None else None,
                )
            except (InvalidPayload, UnknownJobType):
                continue
            new.requeued_from = letter
            jobs.append(new)
        if not jobs:
            return []
        db.bulk_insert_jobs(jobs)
        DeadLetter.objects.filter(id__in=[j.requeued_from_id for j in jobs]).update(
            requeued_at=timezone.now(),
            requeued_job=Subquery(
                Job.objects.filter(requeued_from=OuterRef("pk")).order_by("-id").values("id")[:1]
            ),
        )
        db.notify({j.queue for j in jobs})
        if signals.job_enqueued.has_listeners(Job):
            for stored in jobs:
                signals.send(signals.job_enqueued, stored)
    _run_immediately()
    return jobs


def requeue(dead_letter_id: int, payload: dict | None = None) -> Job | None:
    """A fresh pending job from a dead letter (an enqueue of its type and payload), at most once:
    returns None if it was already requeued or discarded. ``payload`` replaces the stored one
    (validated by the job type's model)."""
    with transaction.atomic():
        dead = DeadLetter.objects.select_for_update().get(id=dead_letter_id)
        if not dead.is_open:
            return None
        if payload is not None:
            job_type = get_job_type(dead.type)
            dead.payload = validate_payload(job_type, payload)
            dead.payload_version = job_type.payload_version
        job = enqueue(
            dead.type,
            dead.payload,
            priority=dead.priority,
            queue=dead.queue,
            tags=dead.job.tags if dead.job is not None else None,  # staff still find it by its tags
            meta=dead.job.meta if dead.job is not None else None,
            _payload_version=dead.payload_version,
            _requeued_from=dead,
        )
        dead.requeued_at = timezone.now()
        dead.requeued_job = job
        dead.save(update_fields=["payload", "payload_version", "requeued_at", "requeued_job"])
        return job
