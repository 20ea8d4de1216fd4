"""Why is this job waiting? The answer to staff's first question about a job that does not run, read from
the same rows the claim reads (it changes nothing).

``explain(job)`` returns the reasons in the order a job meets them on its way to a worker: not waiting
at all (finished, running), not due yet, waiting on parents, held by staff (queue or type paused), held
by its circuit breaker, held by a limit (rate, concurrency key), no worker to take it (none alive for
its queue, all busy); and "due and claimable" when nothing holds it. Each check is a function of a
:class:`Situation` in ``CHECKS``; a new hold is one more function in that list, at its place.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from django.db.models import Count

from jobs import conf, db
from jobs.models import (
    FINISHED_STATUSES,
    BreakerState,
    Job,
    JobStatus,
    JobTypeState,
    QueueState,
    RateLimitStart,
    WorkerProcess,
)
from jobs.registry import JobType, job_types


@dataclass(frozen=True)
class Reason:
    """One reason, for code (``code``) and for people (``text``, a sentence)."""

    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


# The codes, one per check; tests and callers compare against these.
FINISHED = "finished"
RUNNING = "running"
EXPIRED = "expired"
NOT_DUE = "not_due"
BLOCKED = "blocked"
QUEUE_PAUSED = "queue_paused"
TYPE_PAUSED = "type_paused"
BREAKER_OPEN = "breaker_open"
RATE_LIMITED = "rate_limited"
CONCURRENCY_KEY_FULL = "concurrency_key_full"
NO_WORKER = "no_worker"
WORKERS_BUSY = "workers_busy"
DUE = "due"


@dataclass
class Situation:
    """A job and what its checks share, read once: the database's clock (which stamps due times and
    heartbeats) and the live workers serving the job's queue."""

    job: Job
    now: datetime
    stale_after: float = field(default_factory=lambda: conf.get("JOBS_STALE_AFTER"))

    @cached_property
    def job_type(self) -> JobType | None:
        return job_types().get(self.job.type)

    @cached_property
    def serving_workers(self) -> list[WorkerProcess]:
        """Live workers that claim from the job's queue (an empty queue list: every queue)."""
        return [
            w
            for w in WorkerProcess.objects.order_by("id")
            if w.is_alive(self.now, self.stale_after) and (not w.queues or self.job.queue in w.queues)
        ]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


# -- the checks, in order ------------------------------------------------------------------------


def not_waiting(s: Situation) -> Reason | None:
    job = s.job
    if job.status in FINISHED_STATUSES:
        note = f" ({job.status_reason})" if job.status_reason else ""
        when = f" at {_at(job.finished_at)}" if job.finished_at else ""
        return Reason(FINISHED, f"Not waiting: it finished {job.status}{when}{note}.")
    if job.status == JobStatus.RUNNING:
        since = f" since {_at(job.started_at)}" if job.started_at else ""
        return Reason(
            RUNNING,
            f"Not waiting: it is running on worker {job.locked_by or '?'}{since} (attempt {job.attempts}).",
        )
    return None


def expired(s: Situation) -> Reason | None:
    if s.job.expires_at is None or s.job.expires_at > s.now:
        return None
    return Reason(
        EXPIRED,
        f"Expired at {_at(s.job.expires_at)}: it will never run; the next claim cancels it"
        " with the reason 'expired'.",
    )


def not_due(s: Situation) -> Reason | None:
    if s.job.run_at <= s.now:
        return None
    wait = _duration((s.job.run_at - s.now).total_seconds())
    why = " (a retry's backoff)" if s.job.attempts else ""
    return Reason(NOT_DUE, f"Not due yet: it runs at {_at(s.job.run_at)}, in {wait}{why}.")


def blocked(s: Situation) -> Reason | None:
    if s.job.status != JobStatus.BLOCKED:
        return None
    waiting = list(
        s.job.parents.exclude(status=JobStatus.SUCCEEDED).order_by("id").values_list("id", "status")[:10]
    )
    named = ", ".join(f"#{pk} ({status})" for pk, status in waiting) or "?"
    return Reason(
        BLOCKED, f"Waiting on {s.job.waiting_on} parent job(s) that have not succeeded yet: {named}."
    )


def queue_paused(s: Situation) -> Reason | None:
    state = QueueState.objects.filter(name=s.job.queue, paused=True).first()
    if state is None:
        return None
    by = f" by {state.changed_by}" if state.changed_by else ""
    return Reason(
        QUEUE_PAUSED,
        f"Its queue {s.job.queue} is paused (since {_at(state.changed_at)}{by}): no worker claims from it.",
    )


def type_paused(s: Situation) -> Reason | None:
    state = JobTypeState.objects.filter(name=s.job.type, paused=True).first()
    if state is None:
        return None
    by = f" by {state.changed_by}" if state.changed_by else ""
    return Reason(
        TYPE_PAUSED,
        f"Its type {s.job.type} is paused (since {_at(state.changed_at)}{by}): no worker claims it.",
    )


def breaker_open(s: Situation) -> Reason | None:
    key = s.job.concurrency_key or ""
    row = (
        BreakerState.objects.filter(type=s.job.type, key=key).exclude(state=BreakerState.State.CLOSED).first()
    )
    if row is None:
        return None
    since = f"open since {_at(row.opened_at)}" if row.opened_at else "open"
    if row.state == BreakerState.State.HALF_OPEN and row.probe_job_id:
        probe = f"half-open: job #{row.probe_job_id} is the probe; its success closes the breaker"
    elif row.probe_at and row.probe_at > s.now:
        wait = _duration((row.probe_at - s.now).total_seconds())
        probe = f"it probes with one job at {_at(row.probe_at)}, in {wait}"
    else:
        probe = "its cool-down is over: the next claim takes one job as the probe"
    return Reason(
        BREAKER_OPEN,
        f"The circuit breaker of {row.label} is {since} after repeated failures ({probe}); staff can"
        f" close it (`manage.py jobs breaker close {row.type}{f' --key {key}' if key else ''}`)."
        " Waiting uses no attempt.",
    )


def rate_limited(s: Situation) -> Reason | None:
    jt = s.job_type
    if jt is None or jt.rate is None:
        return None
    count, seconds = jt.rate
    key = s.job.fair_key if jt.rate_key is not None else None
    window = RateLimitStart.objects.filter(
        type=jt.name, key=key or "", started_at__gt=s.now - timedelta(seconds=seconds)
    )
    used = window.count()
    if used < count:
        return None
    oldest = window.order_by("started_at").values_list("started_at", flat=True).first()
    free = _duration((oldest + timedelta(seconds=seconds) - s.now).total_seconds()) if oldest else "?"
    whose = (
        f"of {jt.name} for its key {key!r} ({jt.rate_limit} per key)"
        if key is not None
        else (f"of {jt.name} ({jt.rate_limit})")
    )
    return Reason(
        RATE_LIMITED,
        f"The rate limit {whose} is used up: {used} start(s) in the last {seconds:g}s;"
        f" the next start is possible in about {free}. Waiting uses no attempt.",
    )


def concurrency_key_full(s: Situation) -> Reason | None:
    key = s.job.concurrency_key
    if key is None:
        return None
    limit = s.job.concurrency_limit or 1
    running = Job.objects.filter(status=JobStatus.RUNNING, concurrency_key=key).count()
    if running < limit:
        return None
    return Reason(
        CONCURRENCY_KEY_FULL,
        f"Its concurrency key {key!r} is full: {running} job(s) with that key running, at most {limit}.",
    )


def no_worker(s: Situation) -> Reason | None:
    if s.serving_workers:
        return None
    return Reason(
        NO_WORKER,
        f"No live worker serves its queue {s.job.queue} (none heartbeating within {s.stale_after:g}s"
        " claims from it): start one, e.g. `manage.py runworker"
        + (f" --queues {s.job.queue}`." if s.job.queue != "default" else "`."),
    )


def workers_busy(s: Situation) -> Reason | None:
    workers = s.serving_workers
    if not workers:
        return None
    running = dict(
        Job.objects.filter(status=JobStatus.RUNNING, locked_by__in=[w.id for w in workers])
        .values_list("locked_by")
        .annotate(n=Count("id"))
        .order_by()
    )
    if any(running.get(w.id, 0) < w.concurrency for w in workers):
        return None
    slots = sum(w.concurrency for w in workers)
    return Reason(
        WORKERS_BUSY,
        f"All {len(workers)} live worker(s) serving its queue {s.job.queue} are busy"
        f" ({sum(running.values())} running job(s), {slots} thread(s)): it waits its turn"
        f" (priority {s.job.priority}).",
    )


Check = Callable[[Situation], Reason | None]

CHECKS: list[Check] = [
    expired,
    not_due,
    blocked,
    queue_paused,
    type_paused,
    breaker_open,
    rate_limited,
    concurrency_key_full,
    no_worker,
    workers_busy,
]


def explain(job: Job | int) -> list[Reason]:
    """The reasons ``job`` (a Job or its id; Job.DoesNotExist if there is none) is not running now, in
    order; ``[Reason("due", ...)]`` when nothing holds it, a single finished/running reason when it is
    not waiting at all. The row is read afresh: a Job in hand may be minutes old."""
    job = Job.objects.get(pk=job.pk if isinstance(job, Job) else job)
    situation = Situation(job=job, now=db.now())
    done = not_waiting(situation)
    if done is not None:
        return [done]
    reasons = [reason for check in CHECKS if (reason := check(situation)) is not None]
    if reasons:
        return reasons
    return [Reason(DUE, "Due and claimable: nothing holds it, a worker should take it within a poll.")]
