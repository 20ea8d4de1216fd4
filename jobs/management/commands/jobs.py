"""`python manage.py jobs ...`: the queue from the shell.

Exit codes: 0 done; 1 an error, nothing changed (unknown id, type or schedule, bad JSON, invalid
payload); 2 some of the named jobs or dead letters were left as they were (already finished, already
requeued ...), each reported on stderr.
"""

import getpass
import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from jobs import alerts, explain, health, pruner, read_model, scheduler, staff
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.management.arguments import add_actions
from jobs.models import AuditEntry, CronSchedule, DeadLetter, Job
from jobs.registry import job_types

PARTIAL = 2


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class Command(BaseCommand):
    help = "Inspect and operate the job queue."

    def add_arguments(self, parser):
        add_actions(parser)

    def do_health(self, max_heartbeat_age=None, **options):

        try:
            result = health.check(max_heartbeat_age)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not result.ok:
            raise CommandError(f"unhealthy: {result.reason}", returncode=1)
        self.stdout.write(f"ok: {result.reason}")

    def handle(self, *args, action, **options):
        return getattr(self, f"do_{action.replace('-', '_')}")(**options) or None

    def _report(self, outcome: staff.BulkResult, verb: str, kind: str = "job") -> None:
        for pk in outcome.done:
            self.stdout.write(f"{verb} {kind} {pk}")
        for job in outcome.created:
            self.stdout.write(f"new job {job.pk}")
        for pk, why in outcome.skipped:
            self.stderr.write(f"{kind} {pk} not {verb.lower()}: {why}")
        if outcome.skipped:
            raise CommandError(f"{len(outcome.skipped)} {kind}(s) left as they were", returncode=PARTIAL)

    def _existing_jobs(self, ids: list[int]) -> list[int]:
        found = set(Job.objects.filter(id__in=ids).values_list("id", flat=True))
        missing = [pk for pk in ids if pk not in found]
        if missing:
            raise CommandError(f"no job with id {', '.join(map(str, missing))}; nothing changed")
        return ids

    # -- looking -----------------------------------------------------------------------------------

    def do_stats(self, json: bool = False, **options):
        snap = read_model.snapshot()
        if json:
            self.stdout.write(_dumps(snap.as_json()))
            return
        for line in stats_lines(snap):
            self.stdout.write(line)

    def do_list(self, status=None, job_type=None, queue=None, limit=50, **options):
        jobs = Job.objects.order_by("-id")
        if status:
            jobs = jobs.filter(status__in=status)
        if job_type:
            jobs = jobs.filter(type=job_type)
        if queue:
            jobs = jobs.filter(queue=queue)
        self.stdout.write(f"{'id':>8} {'type':32} {'status':10} {'queue':12} {'prio':>4} {'tries':>5} run_at")
        for j in jobs[: max(1, limit)]:
            self.stdout.write(
                f"{j.pk:8} {j.type:32} {j.status:10} {j.queue:12} {j.priority:4} "
                f"{j.attempts}/{j.max_attempts:<3} {_iso(j.run_at)}"
            )

    def do_show(self, job_id, **options):
        try:
            job = Job.objects.get(pk=job_id)
        except Job.DoesNotExist:
            raise CommandError(f"no job with id {job_id}") from None
        for line in job_lines(job):
            self.stdout.write(line)

    def do_alerts(self, check=False, **options):
        if check:
            changes = alerts.evaluate()
            for alert in changes.opened:
                self.stdout.write(f"opened: {alert.text}")
            for alert in changes.closed:
                self.stdout.write(f"closed: {alert.text}")
        open_alerts = alerts.open_alerts()
        if not open_alerts:
            self.stdout.write("no open alerts")
        for alert in open_alerts:
            self.stdout.write(f"{alert.kind} {alert.subject or '-'} since {_iso(alert.since)}: {alert.text}")

    def do_why(self, job_id, **options):
        try:
            reasons = explain.explain(job_id)
        except Job.DoesNotExist:
            raise CommandError(f"no job with id {job_id}") from None
        for reason in reasons:
            self.stdout.write(f"{reason.code}: {reason.text}")

    # -- acting ------------------------------------------------------------------------------------

    def do_retry(self, job_ids, dead=False, job_type=None, **options):
        if dead:
            if job_ids:
                raise CommandError("give job ids or --dead, not both")
            open_dead = DeadLetter.objects.open()
            if job_type:
                open_dead = open_dead.filter(type=job_type)
            ids = list(open_dead.order_by("id").values_list("id", flat=True))
            if not ids:
                self.stdout.write("no open dead letters" + (f" of type {job_type}" if job_type else ""))
                return
            self._report(staff.requeue(cli_actor(), ids), "Requeued", "dead letter")
            return
        if job_type:
            raise CommandError("--type goes with --dead")
        if not job_ids:
            raise CommandError("give job ids, or --dead [--type T]")
        self._report(staff.retry(cli_actor(), self._existing_jobs(job_ids)), "Retried")

    def do_cancel(self, job_ids, reason="", **options):
        self._report(staff.cancel(cli_actor(), self._existing_jobs(job_ids), reason), "Cancelled")

    def do_bulk(
        self,
        bulk_action,
        job_type="",
        queue="",
        status="",
        error_class="",
        tag="",
        since=None,
        until=None,
        by="created",
        everything=False,
        dry_run=False,
        reason="",
        batch_size=None,
        **options,
    ):
        flt = staff.BulkFilter(
            type=job_type or "",
            queue=queue or "",
            status=status or "",
            error_class=error_class or "",
            tag=tag or "",
            since=_moment(since, "--since"),
            until=_moment(until, "--until"),
            time_field=by,
            everything=everything,
        )
        try:
            if dry_run:
                count = staff.bulk_count(bulk_action, flt)
                self.stdout.write(f"would {bulk_action} {count} (dry run, nothing changed)")
                return
            counts = staff.bulk(cli_actor(), bulk_action, flt, reason=reason, batch_size=batch_size)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{bulk_action}: done {counts.done}, skipped {counts.skipped} in {counts.batches} batch(es)"
        )

    def do_enqueue(self, job_type, payload, delay=None, priority=None, **options):
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandError("--payload must be a JSON object, e.g. '{\"order_id\": 1}'")
        try:
            age = pruner.parse_age(delay) if delay else None
        except ValueError as exc:
            raise CommandError(f"--delay: {exc}") from None
        try:
            job = staff.enqueue(cli_actor(), job_type, data, delay=age, priority=priority)
        except UnknownJobType as exc:
            raise CommandError(f"{exc}; known types: {', '.join(sorted(_job_types()))}") from None
        except InvalidPayload as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"enqueued job {job.pk} ({job.type}, run_at {_iso(job.run_at)})")

    def do_pause(self, queue, **options):
        changed = staff.pause_queue(cli_actor(), queue)
        self.stdout.write(f"queue {queue} paused" + ("" if changed else " (it already was)"))

    def do_resume(self, queue, **options):
        changed = staff.resume_queue(cli_actor(), queue)
        self.stdout.write(f"queue {queue} resumed" + ("" if changed else " (it was not paused)"))

    def do_pause_type(self, job_type, **options):
        try:
            changed = staff.pause_type(cli_actor(), job_type)
        except UnknownJobType as exc:
            raise CommandError(f"{exc}; known types: {', '.join(sorted(_job_types()))}") from None
        self.stdout.write(f"type {job_type} paused" + ("" if changed else " (it already was)"))

    def do_resume_type(self, job_type, **options):
        try:
            changed = staff.resume_type(cli_actor(), job_type)
        except UnknownJobType as exc:
            raise CommandError(f"{exc}; known types: {', '.join(sorted(_job_types()))}") from None
        self.stdout.write(f"type {job_type} resumed" + ("" if changed else " (it was not paused)"))

    def do_breakers(self, **options):
        rows = read_model.open_breakers()
        if not rows:
            self.stdout.write("no open circuit breakers")
        for line in breaker_lines(rows):
            self.stdout.write(line)

    def do_breaker(self, breaker_action, job_type, key="", **options):
        try:
            changed = staff.close_breaker(cli_actor(), job_type, key)
        except UnknownJobType as exc:
            raise CommandError(f"{exc}; known types: {', '.join(sorted(_job_types()))}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        name = f"{job_type} [{key}]" if key else job_type
        self.stdout.write(f"breaker {name} closed" + ("" if changed else " (it was not open)"))

    # -- cron --------------------------------------------------------------------------------------

    def do_cron(self, cron_action, name=None, **options):
        if cron_action == "list":
            scheduler.sync_declared()
            rows = CronSchedule.objects.select_related("last_job").order_by("name")
            self.stdout.write(
                f"{'name':30} {'expression':15} {'enabled':7} {'next run':25} {'last run':25} outcome"
            )
            for s in rows:
                outcome = s.last_job.status if s.last_job else "-"
                self.stdout.write(
                    f"{s.name:30} {s.expression:15} {'yes' if s.enabled else 'no':7} "
                    f"{_iso(s.next_run_at):25} {_iso(s.last_run_at):25} {outcome}"
                )
            return
        try:
            schedule = CronSchedule.objects.get(name=name)
        except CronSchedule.DoesNotExist:
            raise CommandError(f"no cron schedule named {name!r}") from None
        job = staff.run_schedule(cli_actor(), schedule)
        self.stdout.write(f"schedule {schedule.name}: enqueued job {job.id}")

    # -- prune -------------------------------------------------------------------------------------

    def do_prune(self, older_than, **options):
        try:
            age = pruner.parse_age(older_than)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        deleted = staff.prune(cli_actor(), age, label=older_than)
        self.stdout.write(f"deleted {deleted} finished job(s) older than {older_than}")


def _moment(value: str | None, option: str) -> datetime | None:
    try:
        return staff.parse_moment(value)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}") from None


def stats_lines(snap: read_model.Snapshot):
    """``jobs stats`` as text, a line at a time."""
    header = f"{'queue':20} {'state':7} {'blocked':>8} {'pending':>8} {'due':>8} {'running':>8} lag"
    yield header
    for q in snap.queues:
        yield (
            f"{q.name:20} {'paused' if q.paused else 'running':7} {q.blocked:8} {q.pending:8} {q.due:8} "
            f"{q.running:8} {q.lag_seconds:.0f}s"
        )
    for t in snap.paused_types:
        yield f"type {t.name} paused since {_iso(t.changed_at)} by {t.changed_by or '-'}"
    yield from breaker_lines(snap.open_breakers)
    yield (
        f"last hour: {snap.finished_last_hour} finished, {snap.dead_last_hour} dead "
        f"(failure rate {snap.failure_rate_text})"
    )
    newest = snap.newest_dead_letters[0] if snap.newest_dead_letters else None
    yield (
        f"dead letters open: {snap.dead_letters_open}"
        + (f" (newest #{newest.pk} {newest.type}: {newest.error_class})" if newest else "")
    )
    yield f"workers alive: {len(snap.workers_alive)} of {len(snap.workers)}"
    for s in snap.schedules:
        yield (
            f"schedule {s.name}: next {_iso(s.next_run_at)}, last {_iso(s.last_run_at)} "
            f"({read_model.schedule_outcome(s)}){'' if s.enabled else ' disabled'}"
        )


def breaker_lines(rows):
    for b in rows:
        probe = f"probe job {b.probe_job_id} running" if b.probe_job_id else f"probes at {_iso(b.probe_at)}"
        yield (
            f"breaker {b.label} {b.state} since {_iso(b.opened_at)}: "
            f"{len(b.failures)} recent failure(s), {probe}"
        )


def job_lines(job: Job):
    """``jobs show`` as text: the job, its relations, payload, result, errors and audit trail."""
    yield f"job {job.pk}: {job.type} [{job.status}]{' ' + job.status_reason if job.status_reason else ''}"
    yield f"  queue {job.queue}, priority {job.priority}, attempts {job.attempts}/{job.max_attempts}"
    yield (
        f"  created {_iso(job.created_at)}, run_at {_iso(job.run_at)}, started {_iso(job.started_at)}, "
        f"finished {_iso(job.finished_at)}"
    )
    if job.locked_by:
        yield f"  worker {job.locked_by}, heartbeat {_iso(job.heartbeat_at)}, progress {job.progress}"
    if job.unique_key:
        yield f"  unique key {job.unique_key}"
    parents = list(job.parents.values_list("id", flat=True))
    children = list(job.children.values_list("id", flat=True))
    if parents or children:
        yield f"  parents {parents or '-'}, children {children or '-'}"
    dead = DeadLetter.objects.filter(job=job).first()
    if dead:
        state = (
            "open"
            if dead.is_open
            else (f"requeued as job {dead.requeued_job_id}" if dead.requeued_at else "discarded")
        )
        yield f"  dead letter {dead.pk} ({state})"
    if job.requeued_from_id:
        yield f"  requeued from dead letter {job.requeued_from_id}"
    yield "payload:"
    yield _dumps(job.payload, indent=2)
    if job.result is not None:
        yield "result:"
        yield _dumps(job.result, indent=2)
    for e in job.errors:
        yield f"error, attempt {e.get('attempt')} at {e.get('at')} on {e.get('worker') or '-'}:"
        yield f"  {e.get('exception')}: {e.get('message')}"
        if e.get("traceback"):
            yield e["traceback"].rstrip()
    for a in AuditEntry.objects.filter(job=job).order_by("at"):
        yield f"audit: {_iso(a.at)} {a.actor} {a.action} {a.details}"


def _job_types():

    return job_types()


def _dumps(value, indent=None) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, default=str)


def _iso(value) -> str:
    return value.isoformat(timespec="seconds") if value else "-"
