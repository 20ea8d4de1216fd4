"""Bulk actions by filter (see the package's docstring): the rows matching a ``BulkFilter``, changed in
batches by id, each batch with its audit row."""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from jobs import api, conf, db, engine
from jobs.models import DeadLetter, Job, JobStatus
from jobs.staff.operations import _actor, _json, audit

# -- bulk actions by filter -----------------------------------------------------------------------

JOB_ACTIONS = ("retry", "cancel")
DEAD_LETTER_ACTIONS = ("requeue", "discard")
BULK_ACTIONS = JOB_ACTIONS + DEAD_LETTER_ACTIONS


@dataclass(frozen=True)
class BulkFilter:
    """Which rows a bulk action takes; empty fields match everything. ``since``/``until`` bound
    ``time_field``: "created" or "finished" for jobs, "created" (when it died) for dead letters.

    ``error_class`` filters dead letters only: a job's errors are a JSON list, and matching the last
    one's exception class would scan every row on both databases. ``tag`` filters jobs by one of their
    tags (``order:42``), and dead letters by their job's tags.
    """

    type: str = ""
    queue: str = ""
    status: str = ""  # jobs only
    error_class: str = ""  # dead letters only
    tag: str = ""
    since: datetime | None = None
    until: datetime | None = None
    time_field: str = "created"
    everything: bool = False  # an empty filter must say so

    def as_dict(self) -> dict:
        """The filter as recorded in the audit trail (only what was given)."""
        data = {
            "type": self.type,
            "queue": self.queue,
            "status": self.status,
            "error_class": self.error_class,
            "tag": self.tag,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
        }
        data = {k: v for k, v in data.items() if v}
        if self.since or self.until:
            data["time_field"] = self.time_field
        return data or {"all": True}

    def is_empty(self) -> bool:
        fields = (self.type, self.queue, self.status, self.error_class, self.tag, self.since, self.until)
        return not any(fields)


@dataclass
class BulkCounts:
    """What a bulk action by filter did: rows done, rows skipped (changed meanwhile, invalid payload),
    and the transactions (batches) it took."""

    done: int = 0
    skipped: int = 0
    batches: int = 0


def parse_moment(value: str | None) -> datetime | None:
    """An ISO datetime (naive: in the current time zone) or date (its midnight) for a filter's window;
    ValueError for anything else."""
    if not value:
        return None
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            moment = datetime(day.year, day.month, day.day) if day else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(f"{value!r} is not an ISO date or datetime (2026-12-06T14:00)")
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


def _window(queryset: QuerySet, field: str, flt: BulkFilter) -> QuerySet:
    if flt.since:
        queryset = queryset.filter(**{f"{field}__gte": flt.since})
    if flt.until:
        queryset = queryset.filter(**{f"{field}__lt": flt.until})
    return queryset


def _matching_jobs(flt: BulkFilter) -> QuerySet:
    if flt.error_class:
        raise ValueError("the error class filters dead letters only (requeue, discard)")
    if flt.time_field not in ("created", "finished"):
        raise ValueError(f"jobs are filtered by created or finished time, not {flt.time_field!r}")
    if flt.status and flt.status not in JobStatus.values:
        raise ValueError(f"unknown status {flt.status!r}")
    jobs = Job.objects.all()
    if flt.type:
        jobs = jobs.filter(type=flt.type)
    if flt.queue:
        jobs = jobs.filter(queue=flt.queue)
    if flt.status:
        jobs = jobs.filter(status=flt.status)
    if flt.tag:
        jobs = jobs.filter(db.tagged(flt.tag))
    return _window(jobs, f"{flt.time_field}_at", flt)


def _matching_dead_letters(flt: BulkFilter) -> QuerySet:
    if flt.status:
        raise ValueError(
            "the status filters jobs only (retry, cancel); bulk requeue and discard take open dead letters"
        )
    if flt.time_field != "created":
        raise ValueError("dead letters are filtered by when they died (created), not by finished time")
    dead = DeadLetter.objects.open()
    if flt.type:
        dead = dead.filter(type=flt.type)
    if flt.queue:
        dead = dead.filter(queue=flt.queue)
    if flt.error_class:
        dead = dead.filter(error_class=flt.error_class)
    if flt.tag:
        dead = dead.filter(job__in=Job.objects.filter(db.tagged(flt.tag)).values("id"))
    return _window(dead, "created_at", flt)


def bulk_candidates(action: str, flt: BulkFilter) -> QuerySet:
    """The rows ``action`` would change: those matching ``flt`` in a state the action applies to.
    ValueError for an unknown action, an empty filter without ``everything``, or a filter field the
    action's rows do not have."""
    if action not in BULK_ACTIONS:
        raise ValueError(f"unknown bulk action {action!r}; one of {', '.join(BULK_ACTIONS)}")
    if flt.is_empty() and not flt.everything:
        raise ValueError("an empty filter matches every row: say so (all) or narrow it")
    if action == "retry":
        return _matching_jobs(flt).filter(
            Q(status=JobStatus.PENDING, run_at__gt=timezone.now())
            | Q(
                status=JobStatus.DEAD,
                dead_letter__isnull=False,
                dead_letter__requeued_at__isnull=True,
                dead_letter__discarded_at__isnull=True,
            )
        )
    if action == "cancel":
        return _matching_jobs(flt).filter(
            Q(status__in=[JobStatus.BLOCKED, JobStatus.PENDING])
            | Q(status=JobStatus.RUNNING, cancel_requested=False)
        )
    return _matching_dead_letters(flt)


def bulk_count(action: str, flt: BulkFilter) -> int:
    """How many rows ``bulk(action, flt)`` would take now (a dry run)."""
    return bulk_candidates(action, flt).count()


def bulk(
    actor, action: str, flt: BulkFilter, *, reason: str = "", batch_size: int | None = None
) -> BulkCounts:
    """Run ``action`` on every row matching ``flt``, ``batch_size`` ids per transaction (keyset by id),
    each batch with its audit row ("bulk_<action>", details: the filter and the batch's counts)."""
    candidates = bulk_candidates(action, flt)
    if action == "discard":
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("a reason is required to discard dead letters")
    size = int(batch_size or conf.get("JOBS_BULK_BATCH_SIZE"))
    if size < 1:
        raise ValueError("the batch size is at least 1")
    apply = {
        "retry": _retry_batch,
        "cancel": _cancel_batch,
        "requeue": _requeue_batch,
        "discard": _discard_batch,
    }[action]
    counts, last = BulkCounts(), 0
    while True:
        ids = list(candidates.filter(id__gt=last).order_by("id").values_list("id", flat=True)[:size])
        if not ids:
            return counts
        last = ids[-1]
        with transaction.atomic():  # the batch's changes and its audit row commit together, or neither
            done = apply(actor, ids, reason)
            details = {
                "filter": flt.as_dict(),
                "batch": counts.batches + 1,
                "ids": [ids[0], ids[-1]],
                "done": done,
                "skipped": len(ids) - done,
            }
            if reason:
                details["reason"] = reason
            audit(actor, f"bulk_{action}", details=_json(details))
        counts.done += done
        counts.skipped += len(ids) - done
        counts.batches += 1


def _retry_batch(actor, ids: list[int], reason: str) -> int:
    rows = Job.objects.filter(id__in=ids).values_list("id", "status", "dead_letter__id")
    done = sum(engine.run_now(pk) for pk, status, _ in rows if status == JobStatus.PENDING)
    dead = [dead_id for _, status, dead_id in rows if status == JobStatus.DEAD and dead_id is not None]
    return done + len(api.requeue_many(dead))


def _cancel_batch(actor, ids: list[int], reason: str) -> int:
    # engine.cancel locks each row: blocked and pending are cancelled, running ones asked to stop; one
    # that finished meanwhile keeps its outcome and counts as skipped.
    reason = reason or f"cancelled by {_actor(actor)[1]} (bulk)"
    return sum(engine.cancel(pk, reason) in (JobStatus.CANCELLED, JobStatus.RUNNING) for pk in ids)


def _requeue_batch(actor, ids: list[int], reason: str) -> int:
    return len(api.requeue_many(ids))


def _discard_batch(actor, ids: list[int], reason: str) -> int:
    return (
        DeadLetter.objects.open()
        .filter(id__in=ids)
        .update(discarded_at=timezone.now(), discarded_by=_actor(actor)[0], discard_reason=reason)
    )
