"""A circuit breaker across two real `runworker` processes: it opens after N failures counted from both,
the rest of its jobs wait with no attempt used, after the cooldown exactly one probe runs, a failed probe
opens it again, a successful one closes it and the rest drain."""

import signal
from datetime import timedelta

import pytest

from jobs import db
from jobs.api import enqueue_many
from jobs.models import BreakerState, Job, JobStatus
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 12
THRESHOLD = 3  # test.breaker: Breaker(failures=3, window=60, cooldown=3600)


def breaker() -> BreakerState | None:
    return BreakerState.objects.filter(type="test.breaker", key="").first()


def none_running() -> bool:
    return not Job.objects.filter(type="test.breaker", status=JobStatus.RUNNING).exists()


def end_cooldown() -> None:
    BreakerState.objects.filter(type="test.breaker").update(probe_at=db.now() - timedelta(seconds=1))


def test_a_breaker_opens_across_two_workers_probes_once_and_closes_on_success(workers, tmp_path):
    flag = tmp_path / "warehouse-down"
    flag.write_text("down")
    jobs = enqueue_many("test.breaker", [{"key": str(i), "flag": str(flag)} for i in range(JOBS)])
    ids = [j.id for j in jobs]
    # One thread each and nothing prefetched: when the breaker opens, at most the other worker's job is
    # still running, so at most one failure more than the threshold is recorded, whoever ran what.
    procs = [workers.start("--concurrency", "1", "--prefetch", "0") for _ in range(2)]

    wait_for(lambda: (b := breaker()) and b.state == "open", timeout=60, message="the breaker opens")
    wait_for(none_running, timeout=60, message="the jobs in flight when it opened finish")
    ran = Run.objects.count()
    assert THRESHOLD <= ran <= THRESHOLD + 1
    rows = Job.objects.filter(id__in=ids)
    assert set(rows.values_list("status", flat=True)) == {JobStatus.PENDING}
    assert sum(rows.values_list("attempts", flat=True)) == ran  # every attempt ran the handler once
    held = rows.filter(attempts=0).count()
    assert held >= JOBS - THRESHOLD - 1

    # The cooldown is over (moved, not waited for): one probe, it fails, the breaker opens again.
    end_cooldown()
    wait_for(
        lambda: Run.objects.count() == ran + 1 and none_running() and breaker().state == "open",
        timeout=60,
        message="one probe runs, fails, and the breaker is open again",
    )
    reopened = breaker()
    assert reopened.probe_job_id is None and reopened.probe_at > db.now() + timedelta(seconds=3000)
    assert Run.objects.count() == ran + 1
    assert sum(rows.values_list("attempts", flat=True)) == ran + 1  # the probe's attempt, no other
    assert set(rows.values_list("status", flat=True)) == {JobStatus.PENDING}

    # The dependency is back: the next probe succeeds, the breaker closes and everything drains.
    flag.unlink()
    end_cooldown()
    wait_for(
        lambda: set(rows.values_list("status", flat=True)) == {JobStatus.SUCCEEDED},
        timeout=120,
        message="the probe closes the breaker and the held jobs drain",
    )
    closed = breaker()
    assert closed.state == "closed" and closed.failures == []
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert workers.exit_code(proc, 30) == 0
