"""Workflows: a job's children wait (blocked) until each parent has succeeded; a parent that dies or is
cancelled cancels everything still waiting below it. Called by the engine inside the transaction of
the parent's transition."""

from collections.abc import Iterable, Sequence

from django.db.models import F
from django.utils import timezone

from jobs import db
from jobs.models import Job, JobDependency, JobStatus


def release_children(parent_ids: Sequence[int], now) -> int:
    """Parents succeeded: count them off their children and make the children with none left pending."""
    child_ids = list(
        JobDependency.objects.filter(parent_id__in=parent_ids).values_list("child_id", flat=True)
    )
    if not child_ids:
        return 0
    for child_id in child_ids:  # a child may wait on several of these parents
        Job.objects.filter(id=child_id, status=JobStatus.BLOCKED).update(waiting_on=F("waiting_on") - 1)
    ready = Job.objects.filter(id__in=child_ids, status=JobStatus.BLOCKED, waiting_on=0)
    queues = set(ready.values_list("queue", flat=True))
    released = ready.update(status=JobStatus.PENDING)
    if released:
        db.notify(queues)
    return released


def cancel_descendants(job_ids: Iterable[int], reason: str) -> int:
    """Cancel every job still waiting (blocked) on these jobs, transitively: the direct children with
    ``reason``, their descendants naming the parent that was cancelled."""
    cancelled = 0
    frontier = list(job_ids)
    now = timezone.now()
    first = True
    while frontier:
        links = list(
            JobDependency.objects.filter(parent_id__in=frontier, child__status=JobStatus.BLOCKED).values_list(
                "parent_id", "child_id"
            )
        )
        if not links:
            break
        by_child = {}
        for parent_id, child_id in links:
            by_child.setdefault(child_id, parent_id)
        for child_id, parent_id in by_child.items():
            why = reason if first else f"parent job #{parent_id} was cancelled"
            cancelled += Job.objects.filter(id=child_id, status=JobStatus.BLOCKED).update(
                status=JobStatus.CANCELLED, status_reason=why, finished_at=now
            )
        frontier = list(by_child)
        first = False
    return cancelled
