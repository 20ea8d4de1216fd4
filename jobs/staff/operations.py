"""Staff operations on jobs, dead letters, queues, job types and schedules, each audited in its own
transaction (see the package's docstring)."""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs import api, engine, pruner, scheduler
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import AuditEntry, CronSchedule, DeadLetter, Job, JobStatus, JobTypeState, QueueState
from jobs.registry import get_job_type, job_types


@dataclass
class BulkResult:
    """What an operation on several objects did: ``done`` ids, and ``skipped`` ids with the reason."""

    done: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    created: list[Job] = field(default_factory=list)

    def summary(self, verb: str) -> str:
        text = f"{verb} {len(self.done)}"
        if self.created:
            text += " (new job " + ", ".join(f"#{j.pk}" for j in self.created) + ")"
        if self.skipped:
            text += "; skipped " + "; ".join(f"#{pk}: {why}" for pk, why in self.skipped)
        return text


def _actor(actor) -> tuple[Any, str]:
    if isinstance(actor, str):
        return None, actor
    return actor, actor.get_username()


def audit(
    actor,
    action: str,
    *,
    job=None,
    dead_letter=None,
    queue: str = "",
    job_type: str = "",
    schedule: str = "",
    details: str = "",
) -> AuditEntry:
    """The record of one staff operation: on a job or dead letter, or on a queue, job type or schedule
    by name."""
    user, name = _actor(actor)
    kind = (
        AuditEntry.TargetKind.QUEUE
        if queue
        else AuditEntry.TargetKind.TYPE
        if job_type
        else AuditEntry.TargetKind.SCHEDULE
        if schedule
        else ""
    )
    return AuditEntry.objects.create(
        user=user,
        actor=name,
        action=action,
        job=job,
        dead_letter=dead_letter,
        target_kind=kind,
        target=queue or job_type or schedule,
        details=details,
    )


# -- jobs ----------------------------------------------------------------------------------------


def retry(actor, job_ids: Iterable[int]) -> BulkResult:
    """Run pending jobs now; a dead job is retried by requeuing its dead letter (a fresh job, once)."""
    outcome = BulkResult()
    for job in Job.objects.filter(id__in=list(job_ids)).select_related("dead_letter").order_by("id"):
        if job.status == JobStatus.PENDING:
            with transaction.atomic():  # the change and its audit row commit together, or neither
                made_due = engine.run_now(job.pk)
                if made_due:
                    audit(actor, "retry", job=job, details="run_at set to now")
            if made_due:
                outcome.done.append(job.pk)
                continue
        elif job.status == JobStatus.DEAD:
            dead = getattr(job, "dead_letter", None)
            if dead is not None:
                try:
                    with transaction.atomic():
                        new = api.requeue(dead.pk)
                        if new is not None:
                            audit(
                                actor,
                                "retry",
                                job=job,
                                dead_letter=dead,
                                details=f"requeued as job #{new.pk}",
                            )
                except (InvalidPayload, UnknownJobType) as exc:
                    outcome.skipped.append((job.pk, f"{exc}; correct the payload and requeue it"))
                    continue
                if new is not None:
                    outcome.done.append(job.pk)
                    outcome.created.append(new)
                    continue
                outcome.skipped.append((job.pk, closed_reason(dead)))
                continue
        job.refresh_from_db(fields=["status"])
        outcome.skipped.append((job.pk, f"is {job.status}, only pending and dead jobs can be retried"))
    return outcome


def run_now(actor, job_ids: Iterable[int]) -> BulkResult:
    """Bring pending jobs' run_at forward to now (a job waiting for its delay or backoff)."""
    outcome = BulkResult()
    for job in Job.objects.filter(id__in=list(job_ids)).order_by("id"):
        with transaction.atomic():
            made_due = engine.run_now(job.pk)
            if made_due:
                audit(
                    actor,
                    "run_now",
                    job=job,
                    details=f"run_at was {job.run_at.isoformat(timespec='seconds')}",
                )
        if made_due:
            outcome.done.append(job.pk)
        else:
            outcome.skipped.append((job.pk, f"is {job.status}, only pending jobs can be run now"))
    return outcome


def cancel(actor, job_ids: Iterable[int], reason: str = "") -> BulkResult:
    """Cancel blocked and pending jobs at once; running ones are asked to stop (the handler sees it)."""
    outcome = BulkResult()
    by = _actor(actor)[1]
    note = f": {reason}" if reason else ""
    for job in Job.objects.filter(id__in=list(job_ids)).order_by("id"):
        if not job.can_cancel():
            outcome.skipped.append((job.pk, f"is already {job.status}"))
            continue
        engine.cancel(
            job.pk,
            reason or f"cancelled by {by}",
            record=lambda status, job=job: audit(
                actor, "cancel", job=job, details=f"{job.status} -> {status}{note}"
            ),
        )
        outcome.done.append(job.pk)
    return outcome


def set_priority(actor, job_ids: Iterable[int], priority: int) -> BulkResult:
    """Change the priority of jobs not yet claimed; a running or finished job keeps its own."""
    outcome = BulkResult()
    for job in Job.objects.filter(id__in=list(job_ids)).order_by("id"):
        # The rule (Job.can_reprioritise) as the update's condition: a job claimed meanwhile keeps its own.
        with transaction.atomic():
            updated = Job.objects.filter(pk=job.pk, status__in=[JobStatus.BLOCKED, JobStatus.PENDING]).update(
                priority=int(priority)
            )
            if updated:
                audit(actor, "priority", job=job, details=f"{job.priority} -> {priority}")
        if updated:
            outcome.done.append(job.pk)
        else:
            outcome.skipped.append((job.pk, f"is {job.status}, only waiting jobs can be reprioritised"))
    return outcome


# -- dead letters --------------------------------------------------------------------------------


def closed_reason(dead: DeadLetter) -> str:
    """Why a dead letter can no longer be requeued, in words for staff."""
    dead.refresh_from_db(fields=["requeued_at", "requeued_job", "discarded_at"])
    if dead.requeued_at:
        return f"already requeued as job #{dead.requeued_job_id}"
    return "discarded"


def requeue(actor, dead_letter_ids: Iterable[int]) -> BulkResult:
    """A fresh job from each open dead letter; one already requeued or discarded is skipped."""
    outcome = BulkResult()
    for dead in DeadLetter.objects.filter(id__in=list(dead_letter_ids)).order_by("id"):
        try:
            with transaction.atomic():
                new = api.requeue(dead.pk)
                if new is not None:
                    audit(
                        actor, "requeue", job=dead.job, dead_letter=dead, details=f"requeued as job #{new.pk}"
                    )
        except (InvalidPayload, UnknownJobType) as exc:
            outcome.skipped.append((dead.pk, f"{exc}; correct the payload and requeue it"))
            continue
        if new is None:
            outcome.skipped.append((dead.pk, closed_reason(dead)))
            continue
        outcome.done.append(dead.pk)
        outcome.created.append(new)
    return outcome


def requeue_type(actor, job_type: str) -> BulkResult:
    """Requeue every open dead letter of ``job_type``."""
    ids = DeadLetter.objects.open().filter(type=job_type).values_list("id", flat=True)
    return requeue(actor, list(ids))


def edit_and_requeue(actor, dead_letter_id: int, payload: dict) -> Job | None:
    """Correct a dead letter's payload and requeue it. The payload is validated by the job type's
    model (InvalidPayload, UnknownJobType: nothing changes). None if it was already closed."""
    with transaction.atomic():
        dead = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
        before = dead.payload
        new = api.requeue(dead.pk, payload=payload)
        if new is None:
            return None
        audit(actor, "edit", job=dead.job, dead_letter=dead, details=f"payload was {_json(before)}")
        audit(actor, "requeue", job=dead.job, dead_letter=dead, details=f"requeued as job #{new.pk}")
    return new


def discard(actor, dead_letter_ids: Iterable[int], reason: str) -> BulkResult:
    """Close dead letters without running them again; a reason is required."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a reason is required to discard a dead letter")
    user = _actor(actor)[0]
    outcome = BulkResult()
    for dead in DeadLetter.objects.filter(id__in=list(dead_letter_ids)).order_by("id"):
        with transaction.atomic():
            closed = (
                DeadLetter.objects.open()
                .filter(pk=dead.pk)
                .update(discarded_at=timezone.now(), discarded_by=user, discard_reason=reason)
            )
            if closed:
                audit(actor, "discard", job=dead.job, dead_letter=dead, details=reason)
        if closed:
            outcome.done.append(dead.pk)
        else:
            outcome.skipped.append((dead.pk, closed_reason(dead)))
    return outcome


# -- queues --------------------------------------------------------------------------------------


def known_queues() -> list[str]:
    """Queues named by a registered job type or by a queue state row (a queue once paused or resumed)."""
    names = {jt.queue for jt in job_types().values()}
    names |= set(QueueState.objects.values_list("name", flat=True))
    return sorted(names)


def _set_paused(actor, name: str, paused: bool) -> bool:
    name = (name or "").strip()
    if not name:
        raise ValueError("a queue name is required")
    by = _actor(actor)[1]
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(name=name)
        changed = state.paused != paused
        state.paused, state.changed_at, state.changed_by = paused, timezone.now(), by
        state.save()
        audit(actor, "pause" if paused else "resume", queue=name, details="" if changed else "no change")
    return changed


def pause_queue(actor, name: str) -> bool:
    """Stop every worker claiming from ``name`` (running jobs finish); True if it was running."""
    return _set_paused(actor, name, True)


def resume_queue(actor, name: str) -> bool:
    return _set_paused(actor, name, False)


# -- job types -----------------------------------------------------------------------------------


def _set_type_paused(actor, name: str, paused: bool) -> bool:
    name = (name or "").strip()
    by = _actor(actor)[1]
    with transaction.atomic():
        state = JobTypeState.objects.select_for_update().filter(name=name).first()
        if state is None:
            get_job_type(name)  # UnknownJobType: nothing to pause or resume, nothing audited
            state = JobTypeState(name=name)
        changed = state.paused != paused
        state.paused, state.changed_at, state.changed_by = paused, timezone.now(), by
        state.save()
        audit(actor, "pause" if paused else "resume", job_type=name, details="" if changed else "no change")
    return changed


def pause_type(actor, name: str) -> bool:
    """Stop every worker claiming jobs of type ``name``, in any queue (running ones finish; other types
    in the same queues keep running); True if it was running. UnknownJobType for a type no code
    declares."""
    return _set_type_paused(actor, name, True)


def resume_type(actor, name: str) -> bool:
    """Let workers claim ``name`` again; its waiting jobs are due at once (they kept their attempts)."""
    return _set_type_paused(actor, name, False)


# -- schedules -----------------------------------------------------------------------------------


def save_schedule(actor, schedule: CronSchedule, changed: Iterable[str] = ()) -> CronSchedule:
    """Validate (expression, time zone, job type) and save, recomputing the next run."""
    created = schedule.pk is None
    with transaction.atomic():
        scheduler.save_schedule(schedule)
        details = "created" if created else "changed " + ", ".join(changed) if changed else "saved"
        audit(actor, "schedule", schedule=schedule.name, details=details)
    return schedule


def set_schedule_enabled(actor, schedules: Iterable[CronSchedule], enabled: bool) -> BulkResult:
    outcome = BulkResult()
    for schedule in schedules:
        if schedule.enabled == enabled:
            outcome.skipped.append((schedule.pk, f"already {'enabled' if enabled else 'disabled'}"))
            continue
        schedule.enabled = enabled
        with transaction.atomic():
            if enabled:
                scheduler.save_schedule(schedule)  # next run from now, not a stale one in the past
            else:
                schedule.save(update_fields=["enabled", "updated_at"])
            audit(actor, "enable" if enabled else "disable", schedule=schedule.name)
        outcome.done.append(schedule.pk)
    return outcome


def run_schedule(actor, schedule: CronSchedule) -> Job:
    with transaction.atomic():
        job = scheduler.run_now(schedule)
        audit(actor, "run_schedule", job=job, schedule=schedule.name, details=f"enqueued job #{job.pk}")
    return job


# -- enqueue -------------------------------------------------------------------------------------


def enqueue(actor, job_type: str, payload: dict, *, delay=None, priority: int | None = None) -> Job:
    """Enqueue by hand (validated: UnknownJobType, InvalidPayload)."""
    if job_type not in job_types():
        raise UnknownJobType(job_type)
    with transaction.atomic():
        job = api.enqueue(job_type, payload, delay=delay, priority=priority)
        audit(actor, "enqueue", job=job, details=_json(job.payload))
    return job


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# -- housekeeping --------------------------------------------------------------------------------


def prune(actor, older_than: timedelta, *, label: str = "") -> int:
    """Delete finished jobs older than ``older_than`` (in bounded batches, see jobs.pruner); the audit
    row records how many went, once the last batch is gone."""
    deleted = pruner.prune(older_than)
    audit(actor, "prune", details=f"{deleted} finished job(s) older than {label or older_than}")
    return deleted


def register_known_queues(sender, app_config=None, **kwargs) -> None:
    """post_migrate receiver (see jobs.apps): a row for every queue a job type names and for every job
    type, so the admin's queues and job types lists show each one to pause without writing anything
    while they list them. Not a staff operation: nothing changes but the lists, and nothing is audited."""
    if app_config is None or app_config.label != "jobs":
        return
    names = {jt.queue for jt in job_types().values()}
    missing = names - set(QueueState.objects.values_list("name", flat=True))
    QueueState.objects.bulk_create([QueueState(name=n) for n in sorted(missing)], ignore_conflicts=True)
    missing = set(job_types()) - set(JobTypeState.objects.values_list("name", flat=True))
    JobTypeState.objects.bulk_create([JobTypeState(name=n) for n in sorted(missing)], ignore_conflicts=True)
