"""Snooze: a handler asked to run again later (``jobs.api.Snooze``, raised or returned) without using an
attempt, up to its type's ``max_snoozes``."""

from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import db, signals
from jobs.engine import UNCLAIMED, _finish_cancelled, announce_finished, fail, held, log
from jobs.exceptions import SnoozeLimitExceeded, UnknownJobType
from jobs.models import Job, JobStatus
from jobs.registry import get_job_type

SNOOZED = "snoozed"  # the outcome of an attempt that snoozed; the job itself is pending


def snooze(job: Job, seconds: float) -> str | None:
    """The handler asked to run again in ``seconds`` (Snooze): back to pending without using an attempt
    (the claim counted one; it is given back). Past its type's ``max_snoozes`` the snooze is a failed
    attempt instead (SnoozeLimitExceeded: retried with backoff, or dead).

    Returns "snoozed", or the status :func:`fail` returns, or cancelled (cancellation was requested
    meanwhile), or None when the claim was lost (nothing changed).
    """
    try:
        allowed = get_job_type(job.type).max_snoozes
    except UnknownJobType:
        allowed = 0
    if job.snoozes >= allowed:
        exc = SnoozeLimitExceeded(
            f"the handler asked to run later ({seconds:g}s) after {job.snoozes} snooze(s), the most its"
            f" job type allows (max_snoozes={allowed}): this attempt counts as failed"
        )
        return fail(job, exc, traceback="")
    with transaction.atomic():
        updated = (
            held(job)
            .filter(cancel_requested=False)
            .update(
                status=JobStatus.PENDING,
                run_at=db.now() + timedelta(seconds=seconds),  # due by the clock the claim reads
                attempts=F("attempts") - 1,
                snoozes=F("snoozes") + 1,
                status_reason=f"snoozed for {seconds:g}s",
                **UNCLAIMED,
            )
        )
        cancelled = not updated and _finish_cancelled(job, timezone.now())
        if updated and seconds < 1:
            db.notify({job.queue})
    if cancelled:
        announce_finished([job])
        return JobStatus.CANCELLED
    if updated:
        signals.send(signals.job_snoozed, job, seconds=seconds)
        return SNOOZED
    log.warning("job %s %s: claim lost before its snooze was recorded", job.id, job.type)
    return None
