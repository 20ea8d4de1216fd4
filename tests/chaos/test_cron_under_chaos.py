"""Cron under chaos: three real workers over a simulated hour of every-minute schedules while a random
worker is SIGKILLed (and replaced) every few simulated minutes, often in the middle of its scheduler's
tick: each due time is still enqueued exactly once."""

import collections
import random
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs import scheduler
from jobs.models import CronSchedule, Job, JobStatus
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MINUTES = 60
KILL_EVERY = 3  # simulated minutes
SCHEDULES = ("every_minute", "every_minute_too")


def test_each_due_minute_is_enqueued_exactly_once_while_workers_are_killed(crew, tmp_path):
    clock = tmp_path / "clock"
    clock.write_text("0")
    for name in SCHEDULES:
        scheduler.save_schedule(
            CronSchedule(name=name, expression="* * * * *", job_type="test.record", payload={"key": name})
        )
    first_due = CronSchedule.objects.get(name=SCHEDULES[0]).next_run_at
    assert CronSchedule.objects.get(name=SCHEDULES[1]).next_run_at == first_due
    env = {"JOBS_CLOCK_OFFSET_FILE": str(clock), "JOBS_SCHEDULER_INTERVAL": "0.05"}
    workers = crew(3, "--concurrency", "2", "--stale-after", "2", env=env)
    pace = random.Random(workers.random.random())
    base = (first_due - timezone.now()).total_seconds()
    started = time.monotonic()
    for minute in range(MINUTES):
        clock.write_text(str(base + minute * 60 + 0.5))
        if minute % KILL_EVERY == KILL_EVERY - 1:
            # A few milliseconds after the clock moved: often while a scheduler is in its tick.
            time.sleep(pace.uniform(0, 0.1))  # paces the chaos; not a wait for a condition
            workers.kill_random()
        due = first_due + timedelta(minutes=minute)
        wait_for(
            lambda due=due: all(s.next_run_at > due for s in CronSchedule.objects.filter(name__in=SCHEDULES)),
            timeout=30,
            message=f"minute {minute} enqueued",
        )
    elapsed = time.monotonic() - started
    wait_for(
        lambda: Job.objects.filter(type="test.record", status=JobStatus.SUCCEEDED).count() == 2 * MINUTES,
        timeout=60,
        message="every scheduled job ran",
    )
    keys = collections.Counter(Job.objects.filter(type="test.record").values_list("unique_key", flat=True))
    assert len(keys) == 2 * MINUTES and set(keys.values()) == {1}, keys
    for name in SCHEDULES:
        runs = Job.objects.filter(type="test.record", payload__key=name).values_list("unique_key", flat=True)
        assert len(set(runs)) == MINUTES, name
    workers.stop()
    print(
        f"\n[{connection.vendor}] cron: {MINUTES} simulated minutes x {len(SCHEDULES)} schedules,"
        f" kills {workers.kills}, jobs {sum(keys.values())}, duplicates 0, {elapsed:.1f}s"
    )
