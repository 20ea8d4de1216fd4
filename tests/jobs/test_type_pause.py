"""Pausing one job type with real `runworker` processes: its jobs wait, every other type in the same
queue drains, and resuming releases them."""

import signal

import pytest

from jobs import staff
from jobs.api import HIGH, enqueue, enqueue_many
from jobs.models import Job, JobStatus, WorkerProcess
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def statuses(job_type: str) -> set[str]:
    return set(Job.objects.filter(type=job_type).values_list("status", flat=True))


def test_a_paused_type_stays_pending_while_another_type_in_its_queue_drains_and_runs_after_resume(workers):
    staff.pause_type("cli", "test.record")
    # Ahead of everything else in claim order: only the pause keeps them back.
    held = [enqueue("test.record", {"key": f"held-{i}"}, priority=HIGH) for i in range(3)]
    others = enqueue_many("test.noop", [{"key": str(i)} for i in range(30)])
    assert {j.queue for j in held} == {j.queue for j in others} == {"default"}
    proc = workers.start("--concurrency", "2")
    wait_for(lambda: statuses("test.noop") == {JobStatus.SUCCEEDED}, timeout=60, message="other type drains")
    assert statuses("test.record") == {JobStatus.PENDING}
    assert set(Job.objects.filter(type="test.record").values_list("attempts", flat=True)) == {0}
    assert not Run.objects.exists()

    staff.resume_type("cli", "test.record")
    wait_for(
        lambda: statuses("test.record") == {JobStatus.SUCCEEDED}, timeout=60, message="resumed type runs"
    )
    assert set(Run.objects.values_list("pid", flat=True)) == {proc.pid}
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0


def test_burst_exits_while_jobs_wait_only_for_a_paused_type(workers):
    staff.pause_type("cli", "test.record")
    held = enqueue("test.record", {"key": "held"})
    ran = enqueue("test.noop", {"key": "runs"})
    proc = workers.start("--burst")
    assert workers.exit_code(proc, 60) == 0
    assert Job.objects.get(id=ran.id).status == JobStatus.SUCCEEDED
    assert Job.objects.get(id=held.id).status == JobStatus.PENDING
    assert not WorkerProcess.objects.exists()


def test_explain_follows_a_real_worker_from_none_to_busy_to_free(workers):
    from jobs import explain as why
    from jobs.api import cancel, explain

    waiting = enqueue("test.noop", {"key": "waits"}, queue="slow", delay=600)
    assert [r.code for r in explain(waiting)] == [why.NOT_DUE, why.NO_WORKER]
    long = enqueue("test.cancellable", {"key": "long"}, queue="slow")
    proc = workers.start("--queues", "slow", "--concurrency", "1", "--prefetch", "0")
    wait_for(
        lambda: Job.objects.get(id=long.id).status == JobStatus.RUNNING, timeout=60, message="long job runs"
    )
    Job.objects.filter(id=waiting.id).update(run_at=Job.objects.get(id=long.id).run_at)  # due now
    assert [r.code for r in explain(waiting)] == [why.WORKERS_BUSY]
    staff.pause_type("cli", "test.noop")  # so that it is still waiting once the thread is free
    cancel(long.id)
    wait_for(lambda: Job.objects.get(id=long.id).is_finished, timeout=60, message="long job ends")
    wait_for(
        lambda: [r.code for r in explain(waiting)] == [why.TYPE_PAUSED],
        timeout=30,
        message="only the pause holds it",
    )
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0
