"""Staff close a circuit breaker by hand (the dependency is back, or the failures were not its fault):
its jobs are claimed again at once. Audited like a pause or a resume."""

from django.db import transaction

from jobs import breakers
from jobs.models import BreakerState
from jobs.registry import get_job_type
from jobs.staff.operations import _actor, audit


def close_breaker(actor, job_type: str, key: str = "") -> bool:
    """Close the breaker of ``job_type`` (of its concurrency key ``key``, if given); True if it was open
    or half-open. UnknownJobType for a type no code declares; ValueError for a type that declares no
    breaker (nothing to close, nothing audited)."""
    job_type, key = (job_type or "").strip(), (key or "").strip()
    with transaction.atomic():
        row = BreakerState.objects.select_for_update().filter(type=job_type, key=key).first()
        if row is None:
            if get_job_type(job_type).breaker is None:  # UnknownJobType first
                raise ValueError(f"job type {job_type!r} declares no circuit breaker")
        changed = row is not None and row.state != breakers.CLOSED
        if changed:
            breakers.close_rows(BreakerState.objects.filter(pk=row.pk), by=_actor(actor)[1])
        details = ", ".join(
            part for part in (f"key {key}" if key else "", "" if changed else "no change") if part
        )
        audit(actor, "close breaker", job_type=job_type, details=details)
    return changed
