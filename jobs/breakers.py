"""Circuit breakers: a job type (or one concurrency key of it) whose jobs keep failing stops being
claimed for a while, instead of burning every waiting job's attempts against a dependency that is down.

One ``BreakerState`` row per type and key, shared by every worker:

- closed: failed attempts (the handler raised or timed out; never a snooze, a PermanentError, a
  cancellation, a lost worker or a payload the queue refused) are recorded with their time in the
  transaction that records the failure; at ``failures`` of them within ``window`` seconds it opens.
- open: the claim skips its jobs (they stay pending, their attempts untouched) until ``probe_at``
  (``cooldown`` after it opened).
- half-open: one claim, holding the row's lock, took one job as the probe. Its success closes the
  breaker (the failures forgotten), its failure opens it for another cooldown; both are recorded in
  the transaction that records the probe's outcome. A probe that ended without one (its worker was
  lost and the reaper handed it back, it snoozed, it was released at shutdown or cancelled) is no
  longer running, and the next claim takes another.

The claim pays one small query per pass, and only in a process that registered a type with a breaker:
the rows that are not closed (usually none). Staff close a breaker by hand (jobs.staff.close_breaker).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Exists, OuterRef

from jobs import db
from jobs.exceptions import (
    InvalidPayload,
    JobCancelled,
    PermanentError,
    SnoozeLimitExceeded,
    UnknownJobType,
    WorkerLost,
)
from jobs.models import BreakerState, Job, JobStatus
from jobs.registry import Breaker, job_types

log = logging.getLogger("jobs.breakers")

CLOSED, OPEN, HALF_OPEN = BreakerState.State.CLOSED, BreakerState.State.OPEN, BreakerState.State.HALF_OPEN

# Not a dependency that is down: a refusal of this one job (PermanentError: a 4xx, a missing row), the
# queue's own refusals, a cancellation, a lost worker, a snooze.
NOT_COUNTED = (PermanentError, InvalidPayload, UnknownJobType, JobCancelled, WorkerLost, SnoozeLimitExceeded)


def breaker_of(type_name: str) -> Breaker | None:
    job_type = job_types().get(type_name)
    return job_type.breaker if job_type is not None else None


def any_declared() -> bool:
    return any(jt.breaker is not None for jt in job_types().values())


def key_of(job: Job) -> str:
    return job.concurrency_key or ""


# -- the claim -----------------------------------------------------------------------------------


@dataclass
class Holds:
    """What the breakers hold back from one claim pass: ``pairs`` (type, key) of every breaker that is
    not closed (the claim statements skip their jobs), and among them ``probes``, the breakers that may
    be due for a probe (claim_probes decides, by the claim's clock and under the row's lock)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    probes: list[BreakerState] = field(default_factory=list)


NONE = Holds()


def holds() -> Holds:
    """The breakers that are not closed, read once per claim pass (nothing at all in a process whose
    types declare no breaker). Read before the claim's transaction, so that SQLite's write lock is not
    held for it: a breaker that opens meanwhile holds its jobs from the next pass on, as it does for
    jobs already claimed when it opened."""
    if not any_declared() or not _any_not_closed():
        return NONE
    probe_running = Exists(Job.objects.filter(id=OuterRef("probe_job_id"), status=JobStatus.RUNNING))
    rows = list(BreakerState.objects.exclude(state=CLOSED).annotate(probe_running=probe_running))
    if not rows:
        return NONE
    return Holds(
        pairs=[(row.type, row.key) for row in rows],
        probes=[row for row in rows if row.state == OPEN or not row.probe_running],
    )


def _any_not_closed() -> bool:
    """Whether any breaker is not closed: one statement of SQL written once, where the query below
    costs the ORM some 0.5 ms to build on every claim pass (up to a fifth of the claim loop's time in a
    drain of no-op jobs, whose passes claim ~200 jobs each)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {BreakerState._meta.db_table} WHERE state <> %s LIMIT 1", [CLOSED.value]
        )
        return cursor.fetchone() is not None


def _probe_due(row: BreakerState, now: datetime, probe_running: bool) -> bool:
    if row.state == OPEN:
        return row.probe_at is None or row.probe_at <= now
    return row.state == HALF_OPEN and not probe_running


def claim_probes(
    holds: Holds, limit: int, *, now: datetime, types: Sequence[str] | None = None, **common
) -> list[int]:
    """Claim one probe job for each breaker due for one (at most ``limit``), inside the claim's
    transaction. The breaker's row is locked first, passing over a row another worker's claim holds
    (SKIP LOCKED; SQLite's claims are serial anyway) and read again, so two workers never both take a
    probe; the row turns half-open, naming its probe, only if a job was claimed."""
    common.pop("held", None)  # the probe is of a held breaker
    ids: list[int] = []
    for due in holds.probes:
        if len(ids) >= limit:
            break
        if (types is not None and due.type not in types) or not _probe_due(due, now, due.probe_running):
            continue
        qs = BreakerState.objects.filter(pk=due.pk).annotate(
            probe_running=Exists(Job.objects.filter(id=OuterRef("probe_job_id"), status=JobStatus.RUNNING))
        )
        row = db.skip_locked(qs).first()
        if row is None or not _probe_due(row, now, row.probe_running):
            continue  # another worker is taking (or took) this probe
        probe = _claim_one(row, now=now, **common)
        if probe is None:
            continue  # none of its jobs is due (in this worker's queues): the breaker stays as it is
        row.state, row.probe_job_id, row.changed_at = HALF_OPEN, probe, now
        row.save(update_fields=["state", "probe_job_id", "changed_at"])
        log.info("breaker %s: half-open, job %s is the probe", row.label, probe)
        ids.append(probe)
    return ids


def _claim_one(row: BreakerState, **common) -> int | None:
    expired = common.setdefault("expired", [])
    for _ in range(3):  # a job found expired is cancelled instead; the next due one may probe
        before = len(expired)
        got = db.claim_ids(
            limit=1, types=[row.type], keyed=bool(row.key), only_key=row.key or None, probe=True, **common
        )
        if got:
            return got[0]
        if len(expired) == before:
            return None
    return None


# -- outcomes (in the transaction that records the job's) ----------------------------------------


def record_failure(job: Job, exc: BaseException) -> None:
    """A failed attempt of ``job``: counted in its breaker's window, opening the breaker at the
    threshold; the probe's failure opens it again for another cooldown."""
    breaker = breaker_of(job.type)
    if breaker is None or isinstance(exc, NOT_COUNTED):
        return
    now = db.now()
    key = key_of(job)
    lock = BreakerState.objects.select_for_update()
    row = lock.filter(type=job.type, key=key).first()
    if row is None:
        BreakerState.objects.bulk_create([BreakerState(type=job.type, key=key)], ignore_conflicts=True)
        row = lock.get(type=job.type, key=key)
    since = now - timedelta(seconds=breaker.window)
    recent = [at for at in row.failures if datetime.fromisoformat(at) > since]
    row.failures = [*recent, now.isoformat()][-breaker.failures :]
    fields = ["failures"]
    if row.state == HALF_OPEN and row.probe_job_id == job.id:
        _open(row, breaker, now, fields)
        log.warning(
            "breaker %s: the probe (job %s) failed; open again until %s",
            row.label,
            job.id,
            _iso(row.probe_at),
        )
    elif row.state == CLOSED and len(row.failures) >= breaker.failures:
        _open(row, breaker, now, fields)
        log.warning(
            "breaker %s: opened after %s failures within %gs; its jobs wait until a probe at %s",
            row.label,
            len(row.failures),
            breaker.window,
            _iso(row.probe_at),
        )
    row.save(update_fields=fields)


def _open(row: BreakerState, breaker: Breaker, now: datetime, fields: list[str]) -> None:
    row.state, row.probe_job_id, row.changed_at, row.changed_by = OPEN, None, now, ""
    row.probe_at = now + timedelta(seconds=breaker.cooldown)
    if row.opened_at is None:
        row.opened_at = now
    fields += ["state", "probe_job_id", "changed_at", "changed_by", "probe_at", "opened_at"]


def record_success(jobs: Sequence[Job]) -> None:
    """Jobs that succeeded: a half-open breaker whose probe is among them closes, its failures forgotten.
    One statement, and only for types that declare a breaker."""
    declared = job_types()
    ids = [job.id for job in jobs if getattr(declared.get(job.type), "breaker", None) is not None]
    if not ids:
        return
    if close_rows(BreakerState.objects.filter(state=HALF_OPEN, probe_job_id__in=ids), by=""):
        log.info("breaker closed: its probe (one of jobs %s) succeeded", ids)


def close_rows(rows, *, by: str) -> int:
    """Close these breakers (an update of the given queryset): their jobs are claimed again at once."""
    return rows.update(
        state=CLOSED,
        failures=[],
        opened_at=None,
        probe_at=None,
        probe_job_id=None,
        changed_at=db.now_value(),
        changed_by=by,
    )


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"
