"""Rate limits, concurrency keys and cron, each held across several real worker processes."""

import collections
import logging
import threading
import time
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from jobs import scheduler
from jobs.api import enqueue, enqueue_many
from jobs.models import CronSchedule, Job, JobStatus
from jobs.registry import parse_rate
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def all_done(job_type: str, count: int) -> bool:
    return Job.objects.filter(type=job_type, status=JobStatus.SUCCEEDED).count() == count


def test_rate_limit_holds_across_three_workers(workers):
    limited = enqueue_many("test.limited", [{"key": str(i)} for i in range(100)])
    others = enqueue_many("test.record", [{"key": f"other{i}"} for i in range(20)])
    procs = [workers.start("--concurrency", "4") for _ in range(3)]
    wait_for(lambda: all_done("test.record", 20), timeout=30, message="other types ran")
    # the other type was not held up behind the limited one
    assert Job.objects.filter(type="test.limited", status=JobStatus.PENDING).exists()
    wait_for(lambda: all_done("test.limited", 100), timeout=60, message="limited jobs ran")
    starts = sorted(Job.objects.filter(type="test.limited").values_list("started_at", flat=True))
    worst = max(sum(1 for s in starts if t <= s < t + timedelta(seconds=1)) for t in starts)
    assert worst <= 10, f"{worst} starts in one second"
    assert set(Job.objects.filter(type="test.limited").values_list("attempts", flat=True)) == {1}
    assert len(set(Run.objects.filter(job_id__in=[j.id for j in limited]).values_list("pid", flat=True))) > 1
    assert len(others) == 20
    for proc in procs:
        proc.terminate()
        assert proc.wait(20) == 0


def test_parse_rate_accepts_units_and_rejects_nonsense():
    assert parse_rate("120/m") == (120, 60)
    assert parse_rate("5/10s") == (5, 10)
    for bad in ("", "10", "0/s", "ten/s", "10/y"):
        with pytest.raises(ValueError, match="invalid rate limit"):
            parse_rate(bad)


def intervals(group: str) -> list[tuple[datetime, datetime]]:
    return sorted(Run.objects.filter(key=group).values_list("started_at", "finished_at"))


def test_concurrency_key_allows_one_running_job_per_key_across_workers(workers):
    for i in range(6):
        enqueue("test.keyed", {"group": "order-1", "key": str(i)})
        enqueue("test.keyed", {"group": "order-2", "key": str(i)})
    procs = [workers.start("--concurrency", "3") for _ in range(3)]
    wait_for(lambda: all_done("test.keyed", 12), timeout=60, message="keyed jobs ran")
    for group in ("order-1", "order-2"):
        runs = intervals(group)
        assert len(runs) == 6
        for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
            assert start >= end, f"two {group} jobs overlapped"
    # different keys did run side by side
    one, two = intervals("order-1"), intervals("order-2")
    assert any(s1 < e2 and s2 < e1 for s1, e1 in one for s2, e2 in two)
    for proc in procs:
        proc.terminate()
        assert proc.wait(20) == 0


@pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="advisory locks (SQLite claims one at a time)"
)
def test_a_claim_never_waits_behind_another_workers_keyed_or_rate_limited_claim():
    """The other claim may be a host's that was cut off in the middle of it (tests/hosts): its session
    holds the locks until the server's keepalives give up. Meanwhile the other workers claim what needs
    no lock, and leave the keyed and rate-limited jobs to a later claim."""
    import psycopg

    from jobs import db, engine

    plain = enqueue("test.record", {"key": "plain"})
    keyed = enqueue("test.keyed", {"group": "g"})
    limited = enqueue("test.limited", {"key": "limited"})
    with psycopg.connect(**db.listen_conninfo()) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", [0x6A6F6273])  # db.lock_keyed_claims()
        other.execute("SELECT pg_advisory_xact_lock(hashtext('jobs.ratelimit:test.limited'))")
        started = time.monotonic()
        claimed = engine.claim("w", 10)
        took = time.monotonic() - started
    assert [job.id for job in claimed] == [plain.id]
    assert took < 1, took
    assert {job.id for job in engine.claim("w", 10)} == {keyed.id, limited.id}


def test_dead_worker_does_not_hold_a_concurrency_key_past_recovery(workers):
    stuck = enqueue("test.keyed", {"group": "wh-1", "seconds": 60})
    victim = workers.start("--stale-after", "1")
    wait_for(lambda: Run.objects.filter(job_id=stuck.id).exists(), message="keyed job started")
    follower = enqueue("test.keyed", {"group": "wh-1", "seconds": 0})
    victim.kill()
    victim.wait(10)
    Job.objects.filter(id=stuck.id).update(payload={"group": "wh-1", "seconds": 0})
    rescuer = workers.start("--stale-after", "1")
    wait_for(lambda: all_done("test.keyed", 2), timeout=30, message="both keyed jobs ran")
    assert Job.objects.get(id=follower.id).attempts == 1
    rescuer.terminate()
    assert rescuer.wait(20) == 0


# -- cron -----------------------------------------------------------------------------------------


def test_invalid_cron_expression_is_a_clear_error_in_code_and_cli():
    with pytest.raises(ValueError, match="invalid cron expression"):
        scheduler.declare("broken", "every monday", "test.noop")
    with pytest.raises(ValueError, match="unknown time zone"):
        scheduler.declare("tz", "0 0 * * *", "test.noop", time_zone="Mars/Olympus")
    with pytest.raises(CommandError, match="no cron schedule named 'nope'"):
        call_command("jobs", "cron", "run", "nope")


def test_declared_schedules_are_registered_once():
    scheduler.declare("test_nightly", "0 2 * * *", "test.noop", time_zone="Europe/Berlin")
    try:
        assert scheduler.sync_declared() == 1
        assert scheduler.sync_declared() == 0
        schedule = CronSchedule.objects.get(name="test_nightly")
        assert schedule.declared_in_code and schedule.next_run_at > timezone.now()
        assert schedule.next_run_at.astimezone(scheduler.validate_time_zone("Europe/Berlin")).hour == 2
    finally:
        scheduler._declared.pop("test_nightly")


def test_next_runs_follow_the_schedules_time_zone():
    schedule = CronSchedule(name="x", expression="0 0 * * *", time_zone="Europe/Berlin", job_type="test.noop")
    after = datetime(2026, 3, 28, 12, 0, tzinfo=scheduler.validate_time_zone("UTC"))
    runs = scheduler.next_runs(schedule, 3, after=after)
    # midnight in Berlin: 23:00 UTC before the DST change on 29 March, 22:00 UTC after
    assert [r.astimezone(scheduler.validate_time_zone("UTC")).hour for r in runs] == [23, 22, 22]


def make_schedule(name="every_minute", expression="* * * * *", **fields) -> CronSchedule:
    schedule = CronSchedule(
        name=name, expression=expression, job_type="test.record", payload={"key": name}, **fields
    )
    return scheduler.save_schedule(schedule)


def test_schedule_that_missed_several_runs_runs_once_and_says_so(caplog):
    schedule = make_schedule()
    minute = timezone.now().replace(second=0, microsecond=0)
    CronSchedule.objects.filter(pk=schedule.pk).update(next_run_at=minute - timedelta(minutes=30))
    with caplog.at_level(logging.WARNING, logger="jobs.scheduler"):
        assert len(scheduler.tick()) == 1
        assert scheduler.tick() == []
    assert "missed 31 runs" in caplog.text  # every minute from 30 minutes ago up to this one
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now() and schedule.last_job.type == "test.record"


def test_cron_run_now_and_list_commands(capsys):
    make_schedule("nightly", "0 0 * * *")
    call_command("jobs", "cron", "run", "nightly")
    job = Job.objects.get(type="test.record")
    assert f"enqueued job {job.id}" in capsys.readouterr().out
    call_command("jobs", "cron", "list")
    out = capsys.readouterr().out
    assert "nightly" in out and "0 0 * * *" in out and "pending" in out


def test_concurrent_ticks_enqueue_each_due_time_once():
    # Only this schedule: a minute from now may also be due for the project's own (every 5 minutes).
    CronSchedule.objects.update(enabled=False)
    make_schedule()
    due = timezone.now() + timedelta(minutes=1)
    results, barrier = [], threading.Barrier(4)

    def tick():
        try:
            barrier.wait()
            results.extend(scheduler.tick(now=due))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 1 and Job.objects.filter(type="test.record").count() == 1


def test_three_workers_enqueue_each_minute_of_a_simulated_hour_exactly_once(workers, tmp_path):
    clock = tmp_path / "clock"
    clock.write_text("0")
    make_schedule()
    first_due = CronSchedule.objects.get(name="every_minute").next_run_at
    env = {"JOBS_CLOCK_OFFSET_FILE": str(clock), "JOBS_SCHEDULER_INTERVAL": "0.1"}
    procs = [workers.start("--concurrency", "2", env=env) for _ in range(3)]
    base = (first_due - timezone.now()).total_seconds()
    for minute in range(60):
        clock.write_text(str(base + minute * 60 + 0.5))
        wait_for(
            lambda m=minute: (
                CronSchedule.objects.get(name="every_minute").next_run_at > first_due + timedelta(minutes=m)
            ),
            timeout=20,
            message=f"minute {minute} enqueued",
        )
    wait_for(lambda: all_done("test.record", 60), timeout=30, message="scheduled jobs ran")
    keys = collections.Counter(Job.objects.filter(type="test.record").values_list("unique_key", flat=True))
    assert len(keys) == 60 and set(keys.values()) == {1}
    for proc in procs:
        proc.terminate()
        assert proc.wait(20) == 0
