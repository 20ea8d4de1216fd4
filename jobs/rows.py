"""Building a job's row from its type and the caller's options (validated payload, due time, expiry,
tags, meta), and debouncing: a waiting job holding a unique key takes a new enqueue's payload and run_at.
The api's enqueue calls, and staff's requeue of dead letters."""

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from jobs import signals
from jobs.models import ACTIVE_STATUSES, DependsWhen, Job, JobStatus
from jobs.registry import JobType, as_duration, validate_payload


def due_at(delay: timedelta | float | None, run_at: datetime | None) -> datetime:
    if delay is not None and run_at is not None:
        raise ValueError("pass delay or run_at, not both")
    if run_at is not None:
        if timezone.is_naive(run_at):
            raise ValueError("run_at must be timezone-aware")
        return run_at
    now = timezone.now()
    if delay is None:
        return now
    if not isinstance(delay, timedelta):
        delay = timedelta(seconds=float(delay))
    return now + delay


def clean_tags(tags: Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        raise TypeError("tags must be a list of strings, not a string")
    cleaned = list(dict.fromkeys(tags))  # in order, once each
    for tag in cleaned:
        if not isinstance(tag, str) or not tag or len(tag) > 200:
            raise ValueError(f"a tag must be a non-empty string of at most 200 characters, not {tag!r}")
    return cleaned


def clean_meta(meta: dict | None) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    return json.loads(json.dumps(meta, cls=DjangoJSONEncoder))  # what is stored is what readers get


def build(
    job_type: JobType,
    payload: Any,
    *,
    delay=None,
    run_at=None,
    priority=None,
    queue=None,
    unique_key=None,
    max_attempts=None,
    payload_version=None,
    tags=None,
    meta=None,
    expires_in=None,
) -> Job:
    if payload_version is not None and payload_version < job_type.payload_version:
        payload_version, payload = job_type.payload_version, job_type.upgrade(dict(payload), payload_version)
    data = validate_payload(job_type, payload)
    concurrency_key = fair_key = None
    if job_type.share_key is not None:
        model = job_type.payload.model_validate(data)
        if job_type.concurrency_key is not None:
            concurrency_key = str(job_type.concurrency_key(model))
        fair_key = share_key(job_type, model)
    due = due_at(delay, run_at)
    expires = as_duration(expires_in, "expires_in") or job_type.expires
    built = Job(
        type=job_type.name,
        queue=queue or job_type.queue,
        payload=data,
        payload_version=job_type.payload_version,
        priority=job_type.priority if priority is None else int(priority),
        run_at=due,
        expires_at=due + expires if expires is not None else None,
        tags=clean_tags(tags),
        meta=clean_meta(meta),
        max_attempts=max_attempts or job_type.max_attempts,
        unique_key=unique_key,
        concurrency_key=concurrency_key,
        concurrency_limit=job_type.concurrency_limit if concurrency_key is not None else None,
        fair_key=fair_key,
    )
    signals.send(signals.job_enqueuing, built)
    return built


def share_key(job_type: JobType, model: Any) -> str:
    """The job's ``fair_key``: what its type's per-key rate limit counts by and fair share rotates over."""
    key = str(job_type.share_key(model))
    if len(key) > 200:
        raise ValueError(f"the key of a {job_type.name} job is longer than 200 characters: {key[:40]!r}...")
    return key


def check_options(unique_key, depends_on, when, on_conflict, max_wait) -> None:
    if on_conflict not in ("keep", "replace"):
        raise ValueError(f"on_conflict must be 'keep' or 'replace', not {on_conflict!r}")
    if on_conflict == "replace" and unique_key is None:
        raise ValueError("on_conflict='replace' needs a unique_key: it replaces the job holding that key")
    if max_wait is not None and on_conflict != "replace":
        raise ValueError("max_wait bounds a debounce: pass it with on_conflict='replace'")
    if when not in DependsWhen.values:
        raise ValueError(f"when must be one of {DependsWhen.values}, not {when!r}")
    if when != DependsWhen.SUCCEEDED and not depends_on:
        raise ValueError("when= qualifies depends_on: pass the jobs this one depends on")


def replace(new: Job, max_wait: timedelta | float | None) -> Job | None:
    """Debounce: the unfinished job holding ``new``'s key, locked; if it has not started, it takes
    ``new``'s payload and run_at, capped at ``max_wait`` after its first enqueue. None if the key was
    freed meanwhile.

    The row lock (PostgreSQL) or the write lock every SQLite transaction takes (BEGIN IMMEDIATE)
    serialises concurrent replaces of one key, and a worker's claim skips a locked row, so a replace
    either changes a job before it is claimed or finds it running and leaves it alone.
    """
    existing = (
        Job.objects.select_for_update().filter(unique_key=new.unique_key, status__in=ACTIVE_STATUSES).first()
    )
    if existing is None or existing.status == JobStatus.RUNNING or existing.type != new.type:
        return existing  # started, or another type's job holding the key: it stands as it is
    run_at = new.run_at
    if max_wait is not None:
        if not isinstance(max_wait, timedelta):
            max_wait = timedelta(seconds=float(max_wait))
        run_at = min(run_at, existing.created_at + max_wait)
    changes = {
        "payload": new.payload,
        "payload_version": new.payload_version,
        "concurrency_key": new.concurrency_key,
        "fair_key": new.fair_key,
        "run_at": run_at,
    }
    Job.objects.filter(id=existing.id).update(**changes)
    for name, value in changes.items():
        setattr(existing, name, value)
    return existing


def plan_workflow(jobs: list[Job], edges: Iterable[tuple[Job, Job]]) -> list[tuple[int, int]]:
    """The (parent, child) positions of a workflow's ``edges``, each job set blocked on its parents
    (or pending without any). Raises ValueError for a job already stored or given twice, an edge
    naming a job not in ``jobs``, or a cycle."""
    position = {id(job): n for n, job in enumerate(jobs)}
    if len(position) != len(jobs) or any(job.pk is not None for job in jobs):
        raise ValueError("a workflow's jobs are unsaved jobs from prepare(), each given once")
    try:
        pairs = sorted({(position[id(parent)], position[id(child)]) for parent, child in edges})
    except KeyError:
        raise ValueError("an edge names a job that is not among the workflow's jobs") from None
    check_acyclic(len(jobs), pairs)
    waiting = [0] * len(jobs)
    for _, child in pairs:
        waiting[child] += 1
    for job, parents in zip(jobs, waiting, strict=True):
        job.status = JobStatus.BLOCKED if parents else JobStatus.PENDING
        job.waiting_on = parents
    return pairs


def check_acyclic(count: int, edges: list[tuple[int, int]]) -> None:
    """Raise ValueError if the (parent, child) positions among ``count`` jobs form a cycle."""
    if any(parent == child for parent, child in edges):
        raise ValueError("a job cannot depend on itself")
    waiting = [0] * count
    for _, child in edges:
        waiting[child] += 1
    ready = [n for n in range(count) if not waiting[n]]
    released = 0
    while ready:
        node = ready.pop()
        released += 1
        for parent, child in edges:
            if parent == node:
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
    if released != count:
        raise ValueError("the workflow's dependencies form a cycle: its jobs would wait forever")
