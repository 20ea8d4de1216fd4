"""Helpers for the shop's own tests: run due jobs in-process, assert what was enqueued, immediate mode.

from jobs.testing import assert_enqueued, immediate, run_jobs
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.test import override_settings

from jobs import execution
from jobs.models import Job


def run_jobs(queues: Sequence[str] | None = None, *, max_jobs: int | None = None) -> int:
    """Run every due job (and the children they release) in this process; returns how many ran.

    Jobs that fail are retried later (their run_at moves past now), so this always terminates.
    Handler timeouts are not enforced in-process. A handler's SystemExit or KeyboardInterrupt is its
    job's failure like any exception: the caller gets the failed job, not an exit.
    """
    return execution.drain(queues, max_jobs=max_jobs)


def enqueued(job_type: str, **payload_fields) -> list[Job]:
    """Jobs of ``job_type`` whose payload has all of ``payload_fields``, oldest first."""
    jobs = Job.objects.filter(type=job_type).order_by("id")
    return [j for j in jobs if all(j.payload.get(k) == v for k, v in payload_fields.items())]


def assert_enqueued(job_type: str, count: int | None = None, **payload_fields) -> Job:
    """Assert a job of ``job_type`` with these payload fields exists (exactly ``count`` if given)."""
    found = enqueued(job_type, **payload_fields)
    if not found or (count is not None and len(found) != count):
        seen = list(Job.objects.order_by("id").values_list("type", "payload")[:20])
        want = f"{count} job(s)" if count is not None else "a job"
        raise AssertionError(
            f"expected {want} {job_type!r} with {payload_fields}, found {len(found)}; enqueued: {seen}"
        )
    return found[-1]


def assert_not_enqueued(job_type: str, **payload_fields) -> None:
    found = enqueued(job_type, **payload_fields)
    if found:
        raise AssertionError(
            f"expected no {job_type!r} job with {payload_fields}, found {[j.id for j in found]}"
        )


@contextmanager
def immediate() -> Iterator[None]:
    """Run jobs inline as they are enqueued (and the jobs they release), for unit tests."""
    with override_settings(JOBS_IMMEDIATE=True):
        yield
