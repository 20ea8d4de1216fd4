"""The queue's read model: the queue at a glance, for the dashboard, `jobs stats` and the metrics
endpoint (it only reads; the worker's own counters are jobs.worker_counters).

Every query here stays cheap however many finished jobs the table holds: depth counts only unfinished
rows (the partial indexes on pending and running), throughput reads the (status, finished_at) index
for the last hour or day, and per-type totals come from the JobStat counters, never a COUNT(*) over
the whole job table.
"""

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Min, Q
from django.db.models.functions import TruncHour, TruncMinute

from jobs import conf, db
from jobs.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    BreakerState,
    CronSchedule,
    DeadLetter,
    Job,
    JobStat,
    JobStatus,
    JobTypeState,
    QueueState,
    WorkerProcess,
)
from jobs.registry import job_types


@dataclass
class QueueRow:
    name: str
    paused: bool = False
    blocked: int = 0
    pending: int = 0
    due: int = 0
    running: int = 0
    stuck: int = 0  # running, but not heartbeating for JOBS_STALE_AFTER: no live worker holds it
    lag_seconds: float = 0.0


@dataclass
class Series:
    """Finished jobs per slot (minute or hour), oldest first."""

    slot_seconds: int
    start: datetime
    succeeded: list[int]
    dead: list[int]
    cancelled: list[int]

    @property
    def labels(self) -> list[datetime]:
        return [self.start + timedelta(seconds=i * self.slot_seconds) for i in range(len(self.succeeded))]

    @property
    def totals(self) -> list[int]:
        return [a + b + c for a, b, c in zip(self.succeeded, self.dead, self.cancelled, strict=True)]


@dataclass
class Snapshot:
    at: datetime
    queues: list[QueueRow]
    per_minute: Series
    per_hour: Series
    finished_last_hour: int
    dead_last_hour: int
    counters: dict[str, dict[str, int]]  # type -> outcome -> count (all time, from JobStat)
    dead_letters_open: int
    newest_dead_letters: list[DeadLetter]
    schedules: list[CronSchedule]
    workers: list[WorkerProcess]
    stale_after: float = 30.0
    paused_types: list[JobTypeState] = field(default_factory=list)
    open_breakers: list[BreakerState] = field(default_factory=list)

    @property
    def stuck(self) -> int:
        return sum(q.stuck for q in self.queues)

    @property
    def failure_rate_last_hour(self) -> float | None:
        if not self.finished_last_hour:
            return None
        return self.dead_last_hour / self.finished_last_hour

    @property
    def attempt_failure_rate(self) -> float | None:
        """Failed attempts (retried or dead) over all attempts that ended, from the counters."""
        ended = failed = 0
        for outcomes in self.counters.values():
            failed += outcomes.get("failed", 0) + outcomes.get("dead", 0) + outcomes.get("lost", 0)
            ended += sum(n for o, n in outcomes.items() if o not in ("started", "snoozed"))  # no attempt
        return failed / ended if ended else None

    @property
    def failure_rate_text(self) -> str:
        rate = self.failure_rate_last_hour
        return "-" if rate is None else f"{rate:.1%}"

    @property
    def attempt_failure_rate_text(self) -> str:
        rate = self.attempt_failure_rate
        return "-" if rate is None else f"{rate:.1%}"

    @property
    def paused_type_names(self) -> list[str]:
        return [t.name for t in self.paused_types]

    @property
    def workers_alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.is_alive(self.at, self.stale_after)]

    def as_json(self) -> dict:
        """Plain data (no payloads) for `jobs stats --json` and the dashboard's JSON endpoint."""
        iso = _iso
        return {
            "at": iso(self.at),
            "queues": [asdict(q) for q in self.queues],
            "paused_types": [
                {"name": t.name, "since": iso(t.changed_at), "by": t.changed_by} for t in self.paused_types
            ],
            "open_breakers": [
                {
                    "type": b.type,
                    "key": b.key,
                    "state": b.state,
                    "since": iso(b.opened_at),
                    "probe_at": iso(b.probe_at),
                    "probe_job": b.probe_job_id,
                    "failures": len(b.failures),
                }
                for b in self.open_breakers
            ],
            "stuck": self.stuck,
            "finished_last_hour": self.finished_last_hour,
            "dead_last_hour": self.dead_last_hour,
            "failure_rate_last_hour": self.failure_rate_last_hour,
            "attempt_failure_rate": self.attempt_failure_rate,
            "per_minute": {"start": iso(self.per_minute.start), "finished": self.per_minute.totals},
            "per_hour": {"start": iso(self.per_hour.start), "finished": self.per_hour.totals},
            "counters": self.counters,
            "dead_letters": {
                "open": self.dead_letters_open,
                "newest": [
                    {
                        "id": d.pk,
                        "type": d.type,
                        "error_class": d.error_class,
                        "error_message": d.error_message[:500],
                        "created_at": iso(d.created_at),
                    }
                    for d in self.newest_dead_letters
                ],
            },
            "schedules": [
                {
                    "name": s.name,
                    "expression": s.expression,
                    "enabled": s.enabled,
                    "next_run_at": iso(s.next_run_at),
                    "last_run_at": iso(s.last_run_at),
                    "last_outcome": schedule_outcome(s),
                }
                for s in self.schedules
            ],
            "workers": [
                {
                    "id": w.id,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "queues": w.queues,
                    "concurrency": w.concurrency,
                    "state": w.state,
                    "heartbeat_age": (self.at - w.heartbeat_at).total_seconds(),
                    "alive": w.is_alive(self.at, self.stale_after),
                    "current_jobs": w.current_jobs,
                    "jobs_done": w.jobs_done,
                }
                for w in self.workers
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def schedule_outcome(schedule: CronSchedule) -> str:
    if not schedule.last_run_at:
        return "never run"
    if not schedule.last_job_id:
        return "job pruned"
    return schedule.last_job.status if schedule.last_job else "job pruned"


def queue_rows(now: datetime, stale_after: float | None = None) -> list[QueueRow]:
    """Depth, due, lag and stuck jobs per queue. A running job is stuck when its heartbeat is older than
    ``stale_after`` (JOBS_STALE_AFTER): its worker died, and no live worker has reaped it yet."""
    stale_after = conf.get("JOBS_STALE_AFTER") if stale_after is None else stale_after
    rows: dict[str, QueueRow] = {}

    def row(name: str) -> QueueRow:
        return rows.setdefault(name, QueueRow(name=name))

    for jt in job_types().values():
        row(jt.queue)
    for name, paused in QueueState.objects.values_list("name", "paused"):
        row(name).paused = paused
    depth = (
        Job.objects.filter(status__in=ACTIVE_STATUSES)
        .values_list("queue", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for queue, status, n in depth:
        setattr(row(queue), status, n)
    due = (
        Job.objects.filter(status=JobStatus.PENDING, run_at__lte=now)
        .values_list("queue")
        .annotate(n=Count("id"), oldest=Min("run_at"))
        .order_by()
    )
    for queue, n, oldest in due:
        r = row(queue)
        r.due = n
        r.lag_seconds = max(0.0, (now - oldest).total_seconds())
    cutoff = now - timedelta(seconds=stale_after)
    stuck = (
        Job.objects.filter(status=JobStatus.RUNNING)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
        .values_list("queue")
        .annotate(n=Count("id"))
        .order_by()
    )
    for queue, n in stuck:
        row(queue).stuck = n
    return sorted(rows.values(), key=lambda r: r.name)


def throughput(now: datetime, slot: str) -> Series:
    """Finished jobs per minute over the last hour (``slot="minute"``) or per hour over the last day."""
    if slot == "minute":
        size, count, trunc = 60, 60, TruncMinute
        end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    else:
        size, count, trunc = 3600, 24, TruncHour
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(seconds=size * count)
    series = Series(size, start, [0] * count, [0] * count, [0] * count)
    rows = (
        Job.objects.filter(status__in=FINISHED_STATUSES, finished_at__gte=start)
        .annotate(slot=trunc("finished_at", tzinfo=UTC))
        .values_list("slot", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for moment, status, n in rows:
        index = int((moment - start).total_seconds() // size)
        if 0 <= index < count:
            getattr(series, status)[index] += n
    return series


def counters() -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for job_type, outcome, n in JobStat.objects.values_list("type", "outcome", "count"):
        totals[job_type][outcome] += n
    return {t: dict(o) for t, o in sorted(totals.items())}


def snapshot(now: datetime | None = None) -> Snapshot:
    now = now or db.now()  # the clock that stamped heartbeats and due times
    per_minute = throughput(now, "minute")
    open_dead = DeadLetter.objects.open()
    workers = list(WorkerProcess.objects.order_by("hostname", "id"))
    for w in workers:
        w.heartbeat_age = max(0.0, (now - w.heartbeat_at).total_seconds())
    stale_after = conf.get("JOBS_STALE_AFTER")
    return Snapshot(
        at=now,
        queues=queue_rows(now, stale_after),
        per_minute=per_minute,
        per_hour=throughput(now, "hour"),
        finished_last_hour=sum(per_minute.totals),
        dead_last_hour=sum(per_minute.dead),
        counters=counters(),
        dead_letters_open=open_dead.count(),
        newest_dead_letters=list(open_dead.order_by("-created_at", "-id")[:5]),
        schedules=list(CronSchedule.objects.select_related("last_job").order_by("name")),
        workers=workers,
        stale_after=stale_after,
        paused_types=paused_types(),
        open_breakers=open_breakers(),
    )


def long_waiting(now: datetime, due_for: float, limit: int = 5) -> list[Job]:
    """The pending jobs due for the longest, and for over ``due_for`` seconds: what a dashboard asks
    "why?" about. A scan of pending rows only, as the queues' lag is."""
    cutoff = now - timedelta(seconds=due_for)
    return list(
        Job.objects.filter(status=JobStatus.PENDING, run_at__lte=cutoff).order_by("run_at", "id")[:limit]
    )


def open_breakers() -> list[BreakerState]:
    """Circuit breakers open or half-open, the longest open first (see jobs.breakers)."""
    return list(
        BreakerState.objects.exclude(state=BreakerState.State.CLOSED).order_by("opened_at", "type", "key")
    )


def paused_types() -> list[JobTypeState]:
    return list(JobTypeState.objects.filter(paused=True).order_by("name"))
