"""Deleting finished jobs (succeeded, cancelled) in small batches, so no lock is held for long and the
hot table stays small. Dead jobs stay until staff discard their dead letters."""

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from jobs.models import Job, JobStatus

log = logging.getLogger("jobs.pruner")


def prune(older_than: timedelta, *, batch_size: int = 1000) -> int:
    """Delete succeeded and cancelled jobs finished more than ``older_than`` ago; returns how many."""
    cutoff = timezone.now() - older_than
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                Job.objects.filter(
                    status__in=[JobStatus.SUCCEEDED, JobStatus.CANCELLED], finished_at__lt=cutoff
                ).values_list("id", flat=True)[:batch_size]
            )
            if not ids:
                break
            Job.objects.filter(id__in=ids).delete()
        total += len(ids)
    if total:
        log.info("pruned %s finished job(s) older than %s", total, older_than)
    return total


def parse_age(text: str) -> timedelta:
    """'7d', '12h', '30m', '45s' -> timedelta; raises ValueError otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = (text or "").strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"invalid age {text!r}: use a number and a unit, e.g. 7d, 12h, 30m, 45s")
    return timedelta(**{units[text[-1]]: int(text[:-1])})
