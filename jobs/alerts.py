"""Stall and lag alerts: a queue with due jobs and none finished for ``JOBS_STALL_AFTER``, a queue whose
lag exceeds its SLO (``JOBS_LAG_SLO``), a dead worker still holding jobs, a circuit breaker that opened,
and a burst of dead letters.

Each is an incident, one ``Alert`` row while it lasts, shared by every worker and ``jobs alerts
--check``: the evaluator whose insert of the open row gets past the constraint (one open row per kind
and subject) emails ``JOBS_ALERT_EMAILS``, and the one whose conditional update closes it emails the
recovery. The row is committed before the email is sent, so a rollback can never send twice; a crash
between the two loses that one email; the row, the
dashboard and the metrics still show the incident.

An evaluation is a few aggregate queries: the queues' depth and lag (jobs.read_model), one existence
check per queue that has been due for over ``JOBS_STALL_AFTER``, the silent workers and the jobs they
hold, the dead letters of the window, and the open alerts.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Count, Min
from django.urls import NoReverseMatch, reverse

from jobs import conf, db, read_model
from jobs.models import FINISHED_STATUSES, Alert, DeadLetter, Job, JobStatus, WorkerProcess

log = logging.getLogger("jobs.alerts")


@dataclass(frozen=True)
class Condition:
    """Something wrong now, as the rows tell: ``kind`` an ``Alert.Kind``, ``subject`` the queue or
    worker it is about ("" for the dead letters)."""

    kind: str
    subject: str
    since: datetime
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject


@dataclass
class Changes:
    opened: list[Alert]
    closed: list[Alert]


def conditions(
    now: datetime | None = None, queues: list[read_model.QueueRow] | None = None
) -> list[Condition]:
    """What is wrong now. ``queues`` (from read_model.queue_rows at ``now``) saves reading them twice.
    A paused queue is left out: staff stopped it on purpose."""
    now = now or db.now()
    queues = read_model.queue_rows(now) if queues is None else queues
    found = []
    stall_after = conf.get("JOBS_STALL_AFTER")
    for row in queues:
        if row.paused or not row.due:
            continue
        oldest = now - timedelta(seconds=row.lag_seconds)
        # Only a queue due for that long can have gone that long without a completion while due; the
        # check walks the (status, finished_at) index over the window and stops at the first of its jobs.
        window_start = now - timedelta(seconds=stall_after)
        if row.lag_seconds >= stall_after and not _finished_since(row.name, window_start):
            found.append(
                Condition(
                    Alert.Kind.STALLED,
                    row.name,
                    oldest,
                    f"queue {row.name} is stalled: {row.due} due job(s) and none finished for "
                    f"{stall_after:g}s",
                )
            )
        slo = conf.lag_slo(row.name)
        if slo is not None and row.lag_seconds > slo:
            found.append(
                Condition(
                    Alert.Kind.LAG,
                    row.name,
                    oldest + timedelta(seconds=slo),
                    f"queue {row.name} lags {row.lag_seconds:.0f}s, over its SLO of {slo:g}s "
                    f"({row.due} due job(s))",
                )
            )
    found += _dead_workers(now)
    found += _open_breakers()
    burst = _dead_letter_burst(now)
    if burst:
        found.append(burst)
    return found


def _finished_since(queue: str, cutoff: datetime) -> bool:
    return Job.objects.filter(status__in=FINISHED_STATUSES, finished_at__gte=cutoff, queue=queue).exists()


def _dead_workers(now: datetime) -> list[Condition]:
    """Workers silent past JOBS_STALE_AFTER whose jobs still run under their id (nobody reaped them)."""
    stale_after = conf.get("JOBS_STALE_AFTER")
    silent = dict(
        WorkerProcess.objects.filter(heartbeat_at__lt=now - timedelta(seconds=stale_after)).values_list(
            "id", "heartbeat_at"
        )
    )
    if not silent:
        return []
    held = (
        Job.objects.filter(status=JobStatus.RUNNING, locked_by__in=list(silent))
        .values_list("locked_by")
        .annotate(n=Count("id"))
        .order_by("locked_by")
    )
    return [
        Condition(
            Alert.Kind.DEAD_WORKER,
            worker_id,
            silent[worker_id],
            f"worker {worker_id} has been silent for {(now - silent[worker_id]).total_seconds():.0f}s "
            f"and still holds {n} running job(s)",
        )
        for worker_id, n in held
    ]


def _open_breakers() -> list[Condition]:
    """A circuit breaker that opened (jobs.breakers): an incident until it closes (a probe succeeded, or
    staff closed it); half-open is still open. The subject is the type, or "type [key]"."""
    return [
        Condition(
            Alert.Kind.BREAKER,
            b.label,
            b.opened_at or b.changed_at,
            f"the circuit breaker of {b.label} is {b.get_state_display().lower()} after repeated failures: "
            "its jobs wait for a probe",
        )
        for b in read_model.open_breakers()
    ]


def _dead_letter_burst(now: datetime) -> Condition | None:
    burst = conf.get("JOBS_DEAD_LETTER_BURST")
    if burst <= 0:
        return None
    window = conf.get("JOBS_DEAD_LETTER_WINDOW")
    per_type = (
        DeadLetter.objects.filter(created_at__gte=now - timedelta(seconds=window))
        .values_list("type")
        .annotate(n=Count("id"), first=Min("created_at"))
        .order_by("-n", "type")
    )
    rows = list(per_type)
    total = sum(n for _, n, _ in rows)
    if total < burst:
        return None
    types = ", ".join(f"{t} ({n})" for t, n, _ in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return Condition(
        Alert.Kind.DEAD_LETTERS,
        "",
        min(first for _, _, first in rows),
        f"{total} dead letters in the last {window:g}s (at least {burst} is a burst): {types}",
    )


def evaluate(now: datetime | None = None) -> Changes:
    """Open an incident for each new condition and close those that are over, emailing each change
    once across all evaluators. Call it outside a transaction: each claim commits before its email."""
    now = now or db.now()
    # The open incidents first, then the conditions: read the other way round, an evaluator could take
    # a stall it saw before another closed the incident for a new one (an alert email after the
    # recovery email).
    open_alerts = {(a.kind, a.subject): a for a in Alert.objects.filter(closed_at__isnull=True)}
    current = {c.key: c for c in conditions(now)}
    changes = Changes([], [])
    for key, condition in current.items():
        if key in open_alerts:
            continue
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    kind=condition.kind,
                    subject=condition.subject,
                    text=condition.text,
                    since=condition.since,
                    opened_at=now,
                )
        except IntegrityError:
            continue  # another evaluator opened it (and sends its email)
        changes.opened.append(alert)
        log.warning("alert: %s (since %s)", alert.text, _iso(alert.since))
        _email(alert, recovered=False)
    for key, alert in open_alerts.items():
        if key in current:
            continue
        if Alert.objects.filter(pk=alert.pk, closed_at__isnull=True).update(closed_at=now):
            alert.closed_at = now
            changes.closed.append(alert)
            log.warning("alert over: %s (open %s to %s)", alert.text, _iso(alert.opened_at), _iso(now))
            _email(alert, recovered=True)
    return changes


def open_alerts() -> list[Alert]:
    return list(Alert.objects.filter(closed_at__isnull=True).order_by("opened_at", "id"))


def dashboard_url() -> str:
    base = conf.get("JOBS_BASE_URL")
    if not base:
        return ""
    try:
        return base.rstrip("/") + reverse("jobs:dashboard")
    except NoReverseMatch:
        return ""


def _email(alert: Alert, *, recovered: bool) -> None:
    """Tell JOBS_ALERT_EMAILS: the queue or worker, what is wrong, since when, and where to look; no
    job's payload or error (they may hold customer data)."""
    recipients = conf.alert_emails()
    if not recipients:
        return
    what = alert.get_kind_display()
    name = f" {alert.subject}" if alert.subject else ""
    if recovered:
        subject = f"[jobs] Recovered: {what.lower()}{name}"
        lines = [
            f"Recovered: {alert.text}.",
            f"Since {_iso(alert.since)}; alert opened {_iso(alert.opened_at)}, over {_iso(alert.closed_at)}.",
        ]
    else:
        subject = f"[jobs] {what}{name}"
        lines = [f"{alert.text[0].upper()}{alert.text[1:]}.", f"Since {_iso(alert.since)}."]
    url = dashboard_url()
    if url:
        lines.append(f"Dashboard: {url}")
    try:
        send_mail(subject, "\n".join(lines) + "\n", None, recipients)
    except Exception:  # the incident is recorded either way; the log says the email did not go
        log.exception("alert email %r to %s failed", subject, ", ".join(recipients))


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


class Alerts:
    """The worker plugin: evaluates the alerts every JOBS_ALERT_INTERVAL seconds."""

    def __init__(self):
        self.interval = conf.get("JOBS_ALERT_INTERVAL")

    def tick(self, worker=None) -> Changes:
        return evaluate()
