"""Cron: enqueue each due schedule exactly once per due time, however many workers run.

The due schedule's row is locked (``SKIP LOCKED`` on PostgreSQL; SQLite's IMMEDIATE transactions are
serial) and its ``next_run_at`` advanced in the transaction that enqueues, so a second scheduler
either skips the locked row or sees it no longer due. After downtime a schedule that missed several
runs runs once, and says so in the log.
"""

import logging
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.conf import settings
from django.db import transaction

from jobs import clock, conf, db
from jobs.api import enqueue
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import CronSchedule, Job
from jobs.registry import get_job_type

log = logging.getLogger("jobs.scheduler")

_declared: dict[str, dict] = {}


def validate_expression(expression: str) -> None:
    """Raise ValueError with a readable message unless ``expression`` is a valid 5-field cron line."""
    if not isinstance(expression, str) or len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(
            f"invalid cron expression {expression!r}: expected five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'"
        )


def validate_time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def next_after(expression: str, time_zone: str, after: datetime) -> datetime:
    """The first due time strictly after ``after``, as an aware datetime."""
    local = after.astimezone(validate_time_zone(time_zone))
    return croniter(expression, local).get_next(datetime)


def next_runs(schedule: CronSchedule, count: int = 5, after: datetime | None = None) -> list[datetime]:
    runs, moment = [], after or clock.now()
    for _ in range(count):
        moment = next_after(schedule.expression, schedule.time_zone, moment)
        runs.append(moment)
    return runs


def declare(
    name: str,
    expression: str,
    job_type: str,
    payload: dict | None = None,
    *,
    time_zone: str | None = None,
    priority: int | None = None,
) -> None:
    """Declare a schedule in code; it is created on migrate and at worker start, once. Staff edits to
    an existing schedule (expression, enabled, payload) are kept."""
    validate_expression(expression)
    validate_time_zone(time_zone or settings.TIME_ZONE)
    _declared[name] = dict(
        expression=expression,
        job_type=job_type,
        payload=payload or {},
        time_zone=time_zone or settings.TIME_ZONE,
        priority=priority,
    )


def register_declared_schedules(sender, app_config=None, **kwargs) -> None:
    """post_migrate receiver (see jobs.apps): code-declared cron schedules exist as rows as soon as the
    database is migrated."""
    if app_config is not None and app_config.label == "jobs":
        sync_declared()


def sync_declared() -> int:
    """Create the code-declared schedules that are missing; returns how many were created."""
    created = 0
    for name, fields in _declared.items():
        with transaction.atomic():
            if CronSchedule.objects.filter(name=name).exists():
                continue
            schedule = CronSchedule(name=name, declared_in_code=True, **fields)
            schedule.next_run_at = next_after(schedule.expression, schedule.time_zone, clock.now())
            schedule.save()
            created += 1
            log.info(
                "schedule %s (%s) registered, first run %s", name, schedule.expression, schedule.next_run_at
            )
    return created


def save_schedule(schedule: CronSchedule) -> CronSchedule:
    """Validate and save a schedule edited by staff or code, recomputing its next run."""

    validate_expression(schedule.expression)
    validate_time_zone(schedule.time_zone)
    get_job_type(schedule.job_type)
    schedule.next_run_at = next_after(schedule.expression, schedule.time_zone, clock.now())
    schedule.save()
    return schedule


def run_now(schedule: CronSchedule) -> Job:
    """Enqueue a schedule's job at once (staff's "run now"); its regular next run is unchanged."""

    with transaction.atomic():
        job = enqueue(schedule.job_type, schedule.payload, priority=schedule.priority)
        CronSchedule.objects.filter(pk=schedule.pk).update(last_run_at=clock.now(), last_job=job)
    log.info("schedule %s run now: job %s", schedule.name, job.id)
    return job


def _missed_runs(schedule: CronSchedule, now: datetime, limit: int = 1000) -> int:
    count, moment = 0, schedule.next_run_at
    while moment <= now and count < limit:
        count += 1
        moment = next_after(schedule.expression, schedule.time_zone, moment)
    return count


def tick(now: datetime | None = None) -> list[Job]:
    """Enqueue every schedule that is due; each due time once, whoever else is ticking."""

    now = now or clock.now()
    enqueued = []
    while True:
        with transaction.atomic():
            due = CronSchedule.objects.filter(enabled=True, next_run_at__lte=now).order_by(
                "next_run_at", "id"
            )
            due = db.skip_locked(due)
            schedule = due.first()
            if schedule is None:
                break
            due_at = schedule.next_run_at
            missed = _missed_runs(schedule, now)
            schedule.next_run_at = next_after(schedule.expression, schedule.time_zone, now)
            try:
                with transaction.atomic():
                    job = enqueue(
                        schedule.job_type,
                        schedule.payload,
                        priority=schedule.priority,
                        run_at=db.now(),  # due now by the database's clock, not this host's
                        unique_key=f"cron:{schedule.name}:{due_at.isoformat()}",
                    )
            except (UnknownJobType, InvalidPayload) as exc:
                # Skip this due time rather than block every schedule behind a broken one.
                schedule.save(update_fields=["next_run_at", "updated_at"])
                log.error("schedule %s due %s not enqueued: %s", schedule.name, due_at.isoformat(), exc)
                continue
            schedule.last_run_at = now
            schedule.last_job = job
            schedule.save(update_fields=["last_run_at", "last_job", "next_run_at", "updated_at"])
        enqueued.append(job)
        if missed > 1:
            log.warning(
                "schedule %s missed %s runs (first due %s); ran once now as job %s",
                schedule.name,
                missed,
                due_at.isoformat(),
                job.id,
            )
        else:
            log.info("schedule %s due %s: job %s", schedule.name, due_at.isoformat(), job.id)
    return enqueued


class Scheduler:
    """The worker plugin: registers declared schedules once, then ticks every second."""

    def __init__(self):
        self.synced = False
        self.interval = conf.get("JOBS_SCHEDULER_INTERVAL")

    def tick(self, worker=None) -> int:
        if not self.synced:
            sync_declared()
            self.synced = True
        return len(tick())
