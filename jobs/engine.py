"""State transitions of a job: claim, complete, fail, release, reap, cancel, requeue.

Each transition is one short transaction, and every transition of a running job is fenced by its lock
token: a worker that lost its claim (reaped after a timeout, or cancelled) changes nothing.
"""

import copy
import logging
import traceback as tb_module
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import breakers, db, dependencies, fairshare, ratelimit, signals
from jobs.exceptions import (
    InvalidPayload,
    JobCancelled,
    PermanentError,
    UnknownJobType,
    WorkerLost,
)
from jobs.models import DeadLetter, Job, JobStatus, JobTypeState, QueueState
from jobs.registry import get_job_type
from jobs.signals import job_finished

log = logging.getLogger("jobs")

MAX_TRACEBACK = 20_000


def new_token() -> str:
    return uuid.uuid4().hex


# A claim's fields, cleared when a running job ends or goes back to pending.
UNCLAIMED = {"locked_by": None, "lock_token": None, "heartbeat_at": None}


def held(job: Job):
    """The fence of every write about a running job: its row, only while this claim (lock token) still
    holds it. A worker that lost the job (reaped, cancelled and finished) changes nothing through it."""
    return Job.objects.filter(id=job.id, lock_token=job.lock_token, status=JobStatus.RUNNING)


def unclaim(row: Job) -> list[str]:
    """Clear the claim's fields on a row about to be saved; returns their names for update_fields."""
    for name, value in UNCLAIMED.items():
        setattr(row, name, value)
    return list(UNCLAIMED)


# -- claiming ------------------------------------------------------------------------------------


def claim(
    worker_id: str,
    limit: int,
    queues: Sequence[str] | None = None,
    *,
    types: Sequence[str] | None = None,
    above_priority: int | None = None,
) -> list[Job]:
    """Claim up to ``limit`` due jobs for ``worker_id``: priority desc, run_at, id; with
    ``above_priority``, only jobs of a higher priority than that.

    One short transaction: one claim statement in the common case; concurrency-keyed and rate-limited
    types take their own, locked passes so that their limits hold across workers. A job found past its
    ``expires_at`` is cancelled (reason "expired") by the claim statement itself, never run late; the
    claim is then tried again for the places it took.
    """
    claimed: list[Job] = []
    while len(claimed) < limit:
        jobs, expired = _claim(worker_id, limit - len(claimed), queues, types, above_priority)
        claimed += jobs
        if not expired:
            break  # else claim again: expired jobs took places in this claim that due ones may fill
    return sorted(claimed, key=lambda j: (-j.priority, j.run_at, j.id))


def _claim(worker_id, limit, queues, types, above_priority) -> tuple[list[Job], list[Job]]:
    """One claim: the jobs claimed, and the expired ones it cancelled instead. On PostgreSQL, first the
    common claim in one round trip (db.claim_at_once), and only when that comes back short the claim
    transaction below for the rest: expired jobs, jobs of types rate-limited as a whole, keyed jobs by
    fair share, breaker probes (those came after the common claim's jobs before, too)."""
    limited = ratelimit.limited_types(types)
    if db.is_postgres():
        jobs = db.claim_at_once(
            worker_id=worker_id,
            token=new_token(),
            limit=limit,
            queues=queues,
            types=types,
            above_priority=above_priority,
            exclude_types=limited,
            breakers=breakers.any_declared(),
        )
        if len(jobs) >= limit:
            return jobs, []
        more, expired = _claim_in_transaction(
            worker_id, limit - len(jobs), queues, types, above_priority, limited
        )
        return jobs + more, expired
    return _claim_in_transaction(worker_id, limit, queues, types, above_priority, limited)


def _claim_in_transaction(worker_id, limit, queues, types, above_priority, limited):
    """One claim transaction: the jobs claimed, and the expired ones it cancelled instead."""
    expired_ids: list[int] = []
    holds = breakers.holds()  # circuit breakers not closed (usually none), read before the write lock
    with transaction.atomic():
        now = db.prepare_claim()  # the database's clock decides what is due and stamps the claim
        common = dict(
            worker_id=worker_id, token=new_token(), now=now, queues=queues, above_priority=above_priority
        )
        common["held"] = holds.pairs
        # Jobs with a concurrency key, a per-key rate limit or a fair_key carry a fair_key and are
        # claimed by fair share below: the common claim is one statement returning whole rows unless
        # some type has a rate limit for the whole type.
        if not limited:
            jobs, expired = db.claim_jobs(limit=limit, types=types, **common)
            expired_ids = [job.id for job in expired]
        else:
            common["expired"] = expired_ids
            ids = db.claim_ids(limit=limit, types=types, exclude_types=limited, **common)
            for job_type in limited:
                if len(ids) >= limit:
                    break
                ids += ratelimit.claim_limited(job_type, limit - len(ids), **common)
            jobs = list(Job.objects.filter(id__in=ids).only(*db.CLAIMED.split(", "))) if ids else []
            expired = list(Job.objects.filter(id__in=expired_ids)) if expired_ids else []
        keyed = fairshare.fair_types(types)
        if keyed and len(jobs) < limit:  # jobs with a key: round-robin across keys (jobs.fairshare)
            before = len(expired_ids)
            common["expired"] = expired_ids
            ids = fairshare.claim(keyed, limit - len(jobs), **common)
            jobs += list(Job.objects.filter(id__in=ids)) if ids else []
            expired += list(Job.objects.filter(id__in=expired_ids[before:])) if expired_ids[before:] else []
        if holds.probes and len(jobs) < limit:  # one probe per breaker past its cooldown
            before = len(expired_ids)
            probes = breakers.claim_probes(
                holds, limit - len(jobs), types=types, **{**common, "expired": expired_ids}
            )
            jobs += list(Job.objects.filter(id__in=probes)) if probes else []
            expired += list(Job.objects.filter(id__in=expired_ids[before:])) if expired_ids[before:] else []
        if expired_ids:
            for job_id in expired_ids:
                dependencies.cancel_descendants([job_id], f"parent job #{job_id} expired")
    if expired:
        log.info("job(s) %s: expired before they could start; cancelled", sorted(expired_ids))
        announce_finished(expired)
    return jobs, expired


def has_due(queues: Sequence[str] | None = None) -> bool:
    """Whether a job in these queues is due, claimable now or held back only by a rate limit or a
    concurrency key (those wait without using an attempt); jobs of paused queues and paused types are
    not due (a ``--burst`` worker does not wait for staff to resume them)."""
    due = (
        Job.objects.filter(status=JobStatus.PENDING, run_at__lte=timezone.now())
        .exclude(queue__in=QueueState.objects.filter(paused=True).values("name"))
        .exclude(type__in=JobTypeState.objects.filter(paused=True).values("name"))
    )
    if queues:
        due = due.filter(queue__in=queues)
    return due.exists()


# -- finishing -----------------------------------------------------------------------------------


def complete(job: Job, result: Any = None) -> bool:
    """Record success (or cancellation, if it was requested meanwhile) and release the job's children.

    Returns False when the claim was lost: nothing is changed then.
    """
    now = timezone.now()
    with transaction.atomic():
        updated = (
            held(job)
            .filter(cancel_requested=False)
            .update(status=JobStatus.SUCCEEDED, result=result, finished_at=now, progress=100, **UNCLAIMED)
        )
        if updated:
            dependencies.release_children([job.id], now)
            breakers.record_success([job])
        # Cancelled while running: the job ends cancelled, keeping what the handler returned.
        finished = bool(updated) or _finish_cancelled(job, now, result=result)
    if finished:
        announce_finished([job])
    if updated:
        signals.send(signals.job_succeeded, job, result=result)
    if finished:
        return True
    log.warning("job %s %s: claim lost before completion; result discarded", job.id, job.type)
    return False


def complete_many(items: Sequence[tuple[Job, Any]]) -> set[int]:
    """Record the success of several jobs whose handlers returned, in one statement and one transaction,
    and release their children; returns the ids recorded as succeeded or cancelled.

    A job whose claim was lost or whose cancellation was requested is left to :func:`complete`, one by
    one; a job whose handler did not return is never in ``items``.
    """
    now = timezone.now()
    with transaction.atomic():
        db.relax_commit()
        done = set(db.complete_ids([(job.id, job.lock_token, result) for job, result in items], now))
        if done:
            dependencies.release_children(sorted(done), now)
            breakers.record_success([job for job, _ in items if job.id in done])
    announce_finished([job for job, _ in items if job.id in done])
    for job, result in items:
        if job.id in done:
            signals.send(signals.job_succeeded, job, result=result)
        elif complete(job, result):
            done.add(job.id)
    return done


def error_entry(job: Job, exc: BaseException, traceback: str | None = None) -> dict:
    if traceback is None:
        traceback = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "at": timezone.now().isoformat(),
        "attempt": job.attempts,
        "exception": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc)[:2000],
        "traceback": traceback[-MAX_TRACEBACK:],
        "worker": job.locked_by,
    }


def fail(
    job: Job, exc: BaseException, *, traceback: str | None = None, permanent: bool = False
) -> str | None:
    """Record a failed attempt: retry later with backoff, or move to the dead letters.

    Returns the job's new status, or None when the claim was lost (nothing changed).
    """
    status = _record_failure(job, exc, traceback=traceback, permanent=permanent)
    if status in (JobStatus.CANCELLED, JobStatus.DEAD):
        announce_finished([job])
    if status == JobStatus.PENDING:
        signals.send(signals.job_failed, job, error=exc, will_retry=True)
    elif status == JobStatus.DEAD:
        signals.send(signals.job_dead, job, error=exc)
    return status


def _record_failure(job: Job, exc: BaseException, *, traceback: str | None, permanent: bool) -> str | None:
    with transaction.atomic():
        row = held(job).select_for_update().first()
        if row is None:
            log.warning("job %s %s: claim lost before failure was recorded (%s)", job.id, job.type, exc)
            return None
        row.errors = [*row.errors, error_entry(row, exc, traceback)]
        if row.cancel_requested or isinstance(exc, JobCancelled):
            _finish_cancelled(row, timezone.now(), errors=row.errors)
            return JobStatus.CANCELLED
        breakers.record_failure(row, exc)
        permanent = permanent or is_permanent(exc)
        if permanent or row.attempts >= row.max_attempts:
            bury(row)
            return JobStatus.DEAD
        try:
            backoff = get_job_type(row.type).backoff
        except UnknownJobType:
            backoff = None
        delay = backoff.delay(row.attempts) if backoff else timedelta(seconds=60)
        row.status = JobStatus.PENDING
        row.run_at = db.now() + delay  # due by the clock the claim reads
        row.save(update_fields=["errors", "status", "run_at", *unclaim(row)])
        return JobStatus.PENDING


def is_permanent(exc: BaseException) -> bool:
    """Retrying cannot help: the queue's own refusals, or an exception flagged by mark_permanent()."""
    return isinstance(exc, (PermanentError, InvalidPayload, UnknownJobType)) or getattr(
        exc, "_jobs_permanent", False
    )


def mark_permanent(exc: BaseException) -> BaseException:
    """Flag ``exc`` so that its job goes to the dead letters at once, recorded under its own class (a
    task's return value JSON cannot carry is the ``TypeError`` Django's Tasks API names)."""
    exc._jobs_permanent = True
    return exc


def announce_finished(jobs: Sequence[Job]) -> None:
    """Send ``job_finished`` for jobs whose final outcome was just recorded; a receiver's error is
    logged, never raised into the transition that already happened."""
    if not jobs:
        return
    for receiver, response in job_finished.send_robust(sender=Job, jobs=list(jobs)):
        if isinstance(response, Exception):
            log.error(
                "job_finished receiver %r failed for job(s) %s",
                receiver,
                [job.id for job in jobs],
                exc_info=response,
            )


def bury(job: Job) -> DeadLetter:
    """Move ``job`` (locked, in the caller's transaction) to the dead letters and cancel its waiting
    descendants."""
    now = timezone.now()
    last = job.errors[-1] if job.errors else {}
    job.status = JobStatus.DEAD
    job.finished_at = now
    job.save(update_fields=["status", "finished_at", "errors", *unclaim(job)])
    dead = DeadLetter.objects.create(
        job=job,
        type=job.type,
        queue=job.queue,
        payload=job.payload if job.payload is not None else {},  # a stored JSON null
        payload_version=job.payload_version,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        errors=job.errors,
        error_class=last.get("exception", ""),
        error_message=last.get("message", ""),
        created_at=now,
    )
    dependencies.cancel_descendants([job.id], f"parent job #{job.id} is dead")
    log.error("job %s %s: dead after %s attempt(s): %s", job.id, job.type, job.attempts, last.get("message"))
    return dead


def _finish_cancelled(job: Job, now, *, result: Any = None, errors: list | None = None) -> bool:
    fields = dict(status=JobStatus.CANCELLED, finished_at=now, result=result, **UNCLAIMED)
    if errors is not None:
        fields["errors"] = errors
    updated = held(job).update(**fields)
    if updated:
        dependencies.cancel_descendants([job.id], f"parent job #{job.id} was cancelled")
        log.info("job %s %s: cancelled while running", job.id, job.type)
    return bool(updated)


# -- giving work back ----------------------------------------------------------------------------


def release(jobs: Iterable[Job], reason: str) -> int:
    """Hand claimed jobs back to pending without counting the attempt (shutdown, not the job's fault)."""
    released = 0
    queues = set()
    with transaction.atomic():
        for job in sorted(jobs, key=lambda job: job.id):  # in the order the heartbeat locks them
            n = held(job).update(
                status=JobStatus.PENDING, attempts=F("attempts") - 1, status_reason=reason, **UNCLAIMED
            )
            if n:
                released += n
                queues.add(job.queue)
        db.notify(queues)
    return released


def heartbeat(jobs: Sequence[Job]) -> tuple[set[int], set[int]]:
    """Refresh the heartbeat of these running jobs by the database's clock. Returns the ids still held
    by this worker, and among them those whose cancellation was requested; a job missing from the first
    was reclaimed (its worker was silent for too long) and belongs to someone else now."""
    if not jobs:
        return set(), set()
    with transaction.atomic():
        db.bound_time()
        held = db.heartbeat_jobs([(job.id, job.lock_token) for job in jobs])
    return set(held), {job_id for job_id, cancel in held.items() if cancel}


def set_progress(job: Job, percent: int) -> None:
    held(job).update(progress=percent)


def reap_stale(stale_after: float) -> list[int]:
    """Return running jobs whose worker stopped heartbeating to pending (or dead, if that was the last
    attempt). Any live worker runs this; SKIP LOCKED keeps two reapers off the same row."""

    reaped, ended, dead = [], [], []
    with transaction.atomic():
        now = db.now()  # never this host's clock: a host running ahead would reap healthy jobs
        cutoff = now - timedelta(seconds=stale_after)
        qs = Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
        qs = db.skip_locked(qs)
        for row in qs[:100]:
            lost = WorkerLost(
                f"worker {row.locked_by} stopped heartbeating (last at {row.heartbeat_at.isoformat()})"
            )
            row.errors = [*row.errors, error_entry(row, lost, traceback="")]
            if row.cancel_requested:
                row.save(update_fields=["errors"])
                if _finish_cancelled(row, now):
                    ended.append(row)
            elif row.attempts >= row.max_attempts:
                dead.append((copy.copy(row), lost))  # as it ran: bury() clears the claim
                bury(row)
                ended.append(row)
            else:
                row.status = JobStatus.PENDING
                row.run_at = now
                row.save(update_fields=["errors", "status", "run_at", *unclaim(row)])
            reaped.append(row.id)
            log.warning("job %s %s: reclaimed from lost worker (attempt %s)", row.id, row.type, row.attempts)
        if reaped:
            db.notify(
                Job.objects.filter(id__in=reaped, status=JobStatus.PENDING).values_list("queue", flat=True)
            )
    announce_finished(ended)
    for job, lost in dead:
        signals.send(signals.job_dead, job, error=lost)
    return reaped


# -- staff and code operations -------------------------------------------------------------------


def cancel(job_id: int, reason: str = "cancelled", *, record: Callable[[str], object] | None = None) -> str:
    """Cancel a job: blocked or pending at once; running by request (the handler sees ctx.cancelled).

    Returns the job's status afterwards. Finished jobs are left as they are. ``record(status)`` runs
    inside the transaction that cancels (staff's audit row commits with the change), and job_finished
    is sent after it.
    """
    now = timezone.now()
    ended: list[Job] = []
    with transaction.atomic():
        job = Job.objects.select_for_update().get(id=job_id)
        if job.status in (JobStatus.BLOCKED, JobStatus.PENDING):
            job.status = JobStatus.CANCELLED
            job.status_reason = reason
            job.finished_at = now
            job.save(update_fields=["status", "status_reason", "finished_at"])
            dependencies.cancel_descendants([job.id], f"parent job #{job.id} was cancelled")
            ended = [job]
        elif job.status == JobStatus.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            job.status_reason = reason
            job.save(update_fields=["cancel_requested", "status_reason"])
        if record is not None:
            record(job.status)
    announce_finished(ended)
    return job.status


def run_now(job_id: int) -> bool:
    """Make a pending job (waiting for its delay or its retry's backoff) due now; False if it is not
    pending. See jobs.staff for the verbs: retry, run now, requeue."""
    return bool(Job.objects.filter(id=job_id, status=JobStatus.PENDING).update(run_at=db.now()))
