"""Workflows: a job's children wait (blocked) until each parent has succeeded; a parent that dies or is
cancelled cancels everything still waiting below it. A child that depends on a parent with
``when="finished"`` instead waits for the parent to end whatever its outcome (a batch's "on complete"),
and is counted off, not cancelled, when that parent dies or is cancelled. Called by the engine inside
the transaction of the parent's transition."""

from collections.abc import Iterable, Sequence

from django.db.models import F
from django.utils import timezone

from jobs import db
from jobs.models import DependsWhen, Job, JobDependency, JobStatus


def release_children(parent_ids: Sequence[int], now) -> int:
    """Parents succeeded: count them off their children and make the children with none left pending."""
    return _count_off(db.child_ids(list(parent_ids)))


def _count_off(child_ids: list[int]) -> int:
    """One parent fewer to wait for, per entry (a child may appear once per parent); the children left
    with none are made pending."""
    if not child_ids:
        return 0
    for child_id in child_ids:
        Job.objects.filter(id=child_id, status=JobStatus.BLOCKED).update(waiting_on=F("waiting_on") - 1)
    ready = Job.objects.filter(id__in=child_ids, status=JobStatus.BLOCKED, waiting_on=0)
    queues = set(ready.values_list("queue", flat=True))
    released = ready.update(status=JobStatus.PENDING)
    if released:
        db.notify(queues)
    return released


def cancel_descendants(job_ids: Iterable[int], reason: str) -> int:
    """Cancel every job still waiting (blocked) on these jobs until they succeed, transitively: the direct
    children with ``reason``, their descendants naming the parent that was cancelled. A child waiting
    for these jobs to finish (``when="finished"``) is counted off instead, and released when it was
    the last parent it waited for."""
    cancelled = 0
    frontier = list(job_ids)
    now = timezone.now()
    first = True
    while frontier:
        links = list(
            JobDependency.objects.filter(parent_id__in=frontier, child__status=JobStatus.BLOCKED).values_list(
                "parent_id", "child_id", "when"
            )
        )
        if not links:
            break
        by_child = {}
        for parent_id, child_id, when in links:
            if when == DependsWhen.SUCCEEDED:
                by_child.setdefault(child_id, parent_id)
        for child_id, parent_id in by_child.items():
            why = reason if first else f"parent job #{parent_id} was cancelled"
            cancelled += Job.objects.filter(id=child_id, status=JobStatus.BLOCKED).update(
                status=JobStatus.CANCELLED, status_reason=why, finished_at=now
            )
        # After the cancellations: a child that also needed one of these parents to succeed stays cancelled.
        _count_off([child_id for _, child_id, when in links if when == DependsWhen.FINISHED])
        frontier = list(by_child)
        first = False
    return cancelled
