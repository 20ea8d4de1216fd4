"""Running one claimed job: resolve its type, validate its payload, call the handler, record the outcome.

Shared by the worker's threads and the in-process ``run_jobs()`` test helper.
"""

import contextvars
import inspect
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import InterfaceError, OperationalError, connection

from jobs import aio, engine, retry, signals
from jobs import snooze as snoozing
from jobs.exceptions import InvalidPayload, JobCancelled, PermanentError, Snooze, UnknownJobType
from jobs.flag import Flag
from jobs.models import Job, JobDependency
from jobs.registry import get_job_type, load_payload

log = logging.getLogger("jobs")


@dataclass
class JobContext:
    """What a handler knows of its job: ``ctx.job_id``, ``ctx.attempt``, ``ctx.logger``,
    ``ctx.progress(percent)``, ``ctx.cancelled`` and ``ctx.parent_results``."""

    job: Job
    logger: logging.Logger
    cancel_event: Flag | threading.Event = field(default_factory=Flag)

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def cancelled(self) -> bool:
        """True once staff or code asked to cancel this running job; check it between steps."""
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    @cached_property
    def parent_results(self) -> dict[int, Any]:
        """``{parent job id: its result}`` for the jobs this one depended on (``then=``/``depends_on``),
        in ascending id order; None for a parent that returned nothing, died or was cancelled before it
        returned (a ``when="finished"`` child sees those). Read on first use, so a job that never asks,
        or has no parents, costs no query; a batch handler's ``ctx`` is its first job's."""
        links = JobDependency.objects.filter(child_id=self.job.id).order_by("parent_id")
        return dict(links.values_list("parent_id", "parent__result"))

    def progress(self, percent: float) -> None:
        percent = max(0, min(100, int(percent)))
        engine.set_progress(self.job, percent)


@dataclass
class Outcome:
    """How running one job ended (not jobs.staff.BulkResult, which sums up a staff operation)."""

    status: str  # succeeded, pending (retry), dead, cancelled, lost
    duration: float
    error: BaseException | None = None


_PLAIN = (str, int, float, bool, type(None))


def _jsonable(result: Any) -> Any:
    # Round-trip so that what is stored is exactly what readers get back (dates become strings). None
    # and plain scalars (most handlers' results) are already that: 4 us of encoder saved on each.
    if type(result) in _PLAIN:  # the round trip gives these back as they are (nan and inf too)
        return result
    return json.loads(json.dumps(result, cls=DjangoJSONEncoder))


def call_handler(job: Job, ctx: JobContext) -> Any:
    """The handler's return value; raises what it raised, or PermanentError/InvalidPayload/UnknownJobType.
    A Snooze the handler returned is raised, as if it had raised it."""
    job_type = get_job_type(job.type)
    payload = load_payload(job_type, job)
    result = job_type.handler(payload, ctx)
    if inspect.iscoroutine(result):  # an async def handler (jobs.aio)
        result = aio.run(result, ctx, job_type.timeout)
    if isinstance(result, Snooze):
        raise result
    try:
        return _jsonable(result)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"handler returned a value that is not JSON-serialisable: {exc}") from exc


RECORD_FOR = 60.0  # seconds an outcome is retried while the database is away


def _record(fn, *args, **kwargs):
    """Record an outcome, riding out a database that is briefly away (restart, failover)."""
    pause = retry.Pause()
    while True:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if pause.waited >= RECORD_FOR:
                raise  # the job stays running: the reaper hands it back once its heartbeat stops
            # Once per job: the worker's loop says once that the database is away, not every thread.
            log.log(
                logging.WARNING if not pause.waited else logging.DEBUG,
                "job %s: could not record its outcome (%s); retrying until the database answers",
                args[0].id,
                exc,
            )
            connection.close()
            time.sleep(pause.next())


def run(
    job: Job,
    *,
    cancel_event: Flag | threading.Event | None = None,
    abandoned: Flag | threading.Event | None = None,
    defer_success: Callable[[Job, Any, float], None] | None = None,
) -> Outcome:
    """Run a claimed job and record its outcome (fenced by the job's lock token).

    With ``defer_success`` a handler's return value is handed to it (the worker's batched completer)
    instead of being recorded here; the outcome is then "completing". Failures are recorded at once.

    The job runs in a ``contextvars`` context of its own: what job_started receivers set (log context,
    the current span) holds for the handler and the recording of its outcome, and ends with them.
    """
    return contextvars.copy_context().run(
        _run, job, cancel_event=cancel_event, abandoned=abandoned, defer_success=defer_success
    )


_loggers: dict[str, logging.Logger] = {}


def type_logger(job_type: str) -> logging.Logger:
    """``ctx.logger``: the logger "jobs.<type>", looked up once per type, not under logging's lock per job."""
    logger = _loggers.get(job_type)
    if logger is None:
        logger = _loggers[job_type] = logging.getLogger(f"jobs.{job_type}")
    return logger


def _run(job: Job, *, cancel_event, abandoned, defer_success) -> Outcome:
    signals.send(signals.job_started, job)
    ctx = JobContext(job=job, logger=type_logger(job.type), cancel_event=cancel_event or Flag())
    started = time.monotonic()
    error: BaseException | None = None
    snoozed: Snooze | None = None
    try:
        result = call_handler(job, ctx)
    except Snooze as exc:
        snoozed = exc
    except BaseException as exc:
        # PermanentError & co. go to the dead letters, the rest is retried. BaseException too: a
        # handler's SystemExit (a library calling sys.exit()) or KeyboardInterrupt is its failure, not
        # an order to stop; in a worker it would kill the thread and leave the job running until its
        # timeout. Signals reach the worker's main thread, never a handler (see worker.py).
        error, tb = exc, traceback.format_exc()
    duration = time.monotonic() - started
    if abandoned is not None and abandoned.is_set():
        # Timed out: the worker already recorded the attempt as failed; this late outcome is ignored.
        log.warning("job %s %s: finished after its timeout; outcome ignored", job.id, job.type)
        return Outcome("lost", duration, error)
    if snoozed is not None:
        return _snoozed(job, snoozed, duration)
    if error is None and defer_success is not None:
        defer_success(job, result, duration)
        return Outcome("completing", duration)
    if error is None:
        status = "succeeded" if _record(engine.complete, job, result) else "lost"
    else:
        status = _record(engine.fail, job, error, traceback=tb) or "lost"
    log_outcome(job, status, duration, error)
    return Outcome(status, duration, error)


def _snoozed(job: Job, asked: Snooze, duration: float) -> Outcome:
    status = _record(snoozing.snooze, job, asked.seconds) or "lost"
    if status == snoozing.SNOOZED:
        log.info("job %s %s attempt %s: snoozed for %gs", job.id, job.type, job.attempts, asked.seconds)
        return Outcome(status, duration)
    log_outcome(job, status, duration, asked)  # past max_snoozes: a failed attempt, or cancelled
    return Outcome(status, duration, asked)


def log_outcome(job: Job, status: str, duration: float, error: BaseException | None = None) -> None:
    """One line per attempt: a success at DEBUG, anything else at INFO. At thousands of jobs a second a
    line per success would be most of the log, and journald's default rate limit (10,000 lines per
    30 s a service) would start dropping lines, the failures among them; successes are counted in the
    metrics, and LOG_LEVEL=DEBUG shows them."""
    level = logging.DEBUG if status == "succeeded" else logging.INFO
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "job %s %s attempt %s/%s %s in %.1fms%s",
        job.id,
        job.type,
        job.attempts,
        job.max_attempts,
        status,
        duration * 1000,
        f": {type(error).__name__}: {error}" if error else "",
    )


def group_batches(jobs: list[Job], top_up: Callable[[str, int], list[Job]]) -> list[list[Job]]:
    """Group claimed jobs into units of work: one job each, or for a type with ``batch_size > 1`` up
    to that many jobs of the type, topping the batch up with ``top_up(type, n)`` (more claims)."""
    groups: list[list[Job]] = []
    batches: dict[str, list[Job]] = {}
    for job in jobs:
        try:
            size = get_job_type(job.type).batch_size
        except UnknownJobType:
            size = 1
        if size <= 1:
            groups.append([job])
        else:
            batches.setdefault(job.type, []).append(job)
    for job_type, batch in batches.items():
        size = get_job_type(job_type).batch_size
        if len(batch) % size:
            batch += top_up(job_type, size - len(batch) % size)
        groups += [batch[i : i + size] for i in range(0, len(batch), size)]
    return groups


def run_group(
    jobs: list[Job],
    *,
    cancel_event: Flag | threading.Event | None = None,
    abandoned: Flag | threading.Event | None = None,
    defer_success: Callable[[Job, Any, float], None] | None = None,
) -> list[tuple[Job, Outcome]]:
    if len(jobs) == 1 and _batch_size(jobs[0]) <= 1:
        outcome = run(jobs[0], cancel_event=cancel_event, abandoned=abandoned, defer_success=defer_success)
        return [(jobs[0], outcome)]
    return run_batch(jobs, cancel_event=cancel_event, abandoned=abandoned)


def _batch_size(job: Job) -> int:
    try:
        return get_job_type(job.type).batch_size
    except UnknownJobType:
        return 1


def run_batch(
    jobs: list[Job],
    *,
    cancel_event: Flag | threading.Event | None = None,
    abandoned: Flag | threading.Event | None = None,
) -> list[tuple[Job, Outcome]]:
    """Hand a batch handler ``[(job_id, payload), ...]``; it returns ``{job_id: result or exception}``.
    Each job's outcome is recorded on its own; a job the handler did not answer for is failed."""
    return contextvars.copy_context().run(_run_batch, jobs, cancel_event=cancel_event, abandoned=abandoned)


def _run_batch(jobs: list[Job], *, cancel_event, abandoned) -> list[tuple[Job, Outcome]]:
    for job in jobs:
        signals.send(signals.job_started, job)
    job_type = get_job_type(jobs[0].type)
    outcomes: list[tuple[Job, Outcome]] = []
    items, by_id = [], {}
    started = time.monotonic()
    for job in jobs:
        try:
            items.append((job.id, load_payload(job_type, job)))
            by_id[job.id] = job
        except InvalidPayload as exc:
            status = _record(engine.fail, job, exc, traceback="") or "lost"
            outcomes.append((job, Outcome(status, 0.0, exc)))
    if not items:
        return outcomes
    ctx = JobContext(
        job=jobs[0],
        logger=logging.getLogger(f"jobs.{job_type.name}"),
        cancel_event=cancel_event or Flag(),
    )
    try:
        results = job_type.handler(items, ctx)
        if inspect.iscoroutine(results):
            results = aio.run(results, ctx, job_type.timeout)
        if not isinstance(results, dict):
            raise PermanentError(f"batch handler returned {type(results).__name__}, not a dict of outcomes")
    except BaseException as exc:  # as in run()
        tb = traceback.format_exc()
        results = {job_id: exc for job_id in by_id}
        for job_id in by_id:
            results[job_id].__traceback_text__ = tb
    duration = (time.monotonic() - started) / len(items)
    if abandoned is not None and abandoned.is_set():
        log.warning(
            "batch of %s %s job(s) finished after its timeout; outcomes ignored", len(items), job_type.name
        )
        return outcomes + [(job, Outcome("lost", duration)) for job in by_id.values()]
    for job_id, job in by_id.items():
        result = results.get(job_id, _MISSING)
        if result is _MISSING:
            result = RuntimeError(f"batch handler returned no outcome for job {job_id}")
        if isinstance(result, Snooze):
            outcomes.append((job, _snoozed(job, result, duration)))
        elif isinstance(result, BaseException):
            tb = getattr(result, "__traceback_text__", None) or "".join(
                traceback.format_exception(type(result), result, result.__traceback__)
            )
            status = _record(engine.fail, job, result, traceback=tb) or "lost"
            outcomes.append((job, Outcome(status, duration, result)))
        else:
            try:
                value = _jsonable(result)
            except (TypeError, ValueError) as exc:
                status = _record(engine.fail, job, PermanentError(f"result not JSON-serialisable: {exc}"))
                outcomes.append((job, Outcome(status or "lost", duration)))
                continue
            status = "succeeded" if _record(engine.complete, job, value) else "lost"
            outcomes.append((job, Outcome(status, duration)))
    log.info("batch of %s %s job(s): %s", len(items), job_type.name, [o.status for _, o in outcomes])
    return outcomes


_MISSING = object()


_draining = threading.local()


def drain(queues: Sequence[str] | None = None, *, max_jobs: int | None = None) -> int:
    """Run every due job (and the children they release) in this process, one claim at a time;
    returns how many ran. Immediate mode and the test helper ``jobs.testing.run_jobs`` use it.
    Failed jobs are retried later (their run_at moves past now), so it always ends. A job enqueued by
    a handler while draining is picked up by this loop, not by a nested one."""
    if getattr(_draining, "active", False):
        return 0
    _draining.active = True
    ran = 0
    try:
        qs = list(queues) if queues else None
        while max_jobs is None or ran < max_jobs:
            claimed = engine.claim("inline", 1, qs)
            if not claimed:
                break
            top_up = lambda job_type, n: engine.claim("inline", n, qs, types=[job_type])  # noqa: E731
            for group in group_batches(claimed, top_up):
                run_group(group)
                ran += len(group)
    finally:
        _draining.active = False
    return ran
