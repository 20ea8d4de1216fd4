"""What a worker holds and how it learns it lost it: its worker row, its claimed jobs (running or
buffered), and how many jobs it claims ahead. Real `runworker` processes, paused with SIGSTOP where a
host would have been cut off."""

import collections
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F

from jobs import db, engine
from jobs.api import enqueue, enqueue_many
from jobs.models import CronSchedule, Job, JobStatus, WorkerProcess
from tests.testapp.models import Run
from tests.utils import LIBFAKETIME, faketime, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def claim_sizes(job_type: str) -> list[int]:
    """Jobs per claim statement: one claim stamps all its jobs with the same started_at."""
    started = Job.objects.filter(type=job_type).values_list("started_at", flat=True)
    return sorted(collections.Counter(started).values(), reverse=True)


def silent_for(seconds: float, ids: list[int]) -> bool:
    """Every one of these running jobs missed its heartbeats for ``seconds`` by the database's clock."""
    cutoff = db.now().timestamp() - seconds
    rows = Job.objects.filter(id__in=ids, status=JobStatus.RUNNING)
    return len(rows) == len(ids) and all(r.heartbeat_at.timestamp() < cutoff for r in rows)


def test_a_worker_whose_row_was_reaped_registers_again(workers):
    """What another worker's reaper does to a worker silent for 2 x JOBS_STALE_AFTER (a cut link, a
    frozen host; tests/hosts cuts a real link): its row is deleted. Done here by hand, so that a frozen
    process holding SQLite's write lock cannot stall the reaper."""
    proc = workers.start("--stale-after", "1")
    wait_for(lambda: WorkerProcess.objects.filter(pid=proc.pid).exists(), message="registered")
    (worker_id,) = WorkerProcess.objects.filter(pid=proc.pid).values_list("id", flat=True)
    WorkerProcess.objects.filter(id=worker_id).delete()
    wait_for(
        lambda: WorkerProcess.objects.filter(id=worker_id, pid=proc.pid).exists(),
        timeout=10,
        message="the worker is listed again",
    )
    assert "registered again" in workers.output(proc)
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 20) == 0


def test_jobs_taken_over_while_a_worker_was_away_are_cancelled_or_dropped(workers):
    """The worker's running job and its buffered one were reaped and claimed elsewhere while it was
    frozen: on its next heartbeat it flags the running one's handler (ctx.cancelled), never starts the
    buffered one, and claims new work at once."""
    running = enqueue("test.watch", {"key": "A"}, priority=10)
    buffered = enqueue("test.record", {"key": "B"})
    proc = workers.start("--concurrency", "1", "--prefetch", "1", "--stale-after", "1")
    wait_for(lambda: Run.objects.filter(job_id=running.id).exists(), message="A started")
    wait_for(
        lambda: Job.objects.filter(id=buffered.id, status=JobStatus.RUNNING).exists(), message="B buffered"
    )
    workers.freeze(proc)
    ids = [running.id, buffered.id]
    wait_for(lambda: silent_for(1, ids), message="both jobs went silent")
    assert sorted(engine.reap_stale(1)) == ids
    taken = engine.claim("another-worker", 2)
    assert sorted(j.id for j in taken) == ids
    proc.send_signal(signal.SIGCONT)

    wait_for(
        lambda: Run.objects.filter(job_id=running.id, key="A:cancelled").exists(),
        timeout=10,
        message="A's handler saw ctx.cancelled",
    )
    wait_for(lambda: f"job {buffered.id} " in workers.output(proc), message="B's drop logged")
    after = enqueue("test.record", {"key": "C"})
    wait_for(lambda: Run.objects.filter(job_id=after.id).exists(), timeout=10, message="new work claimed")
    assert Run.objects.get(job_id=after.id).pid == proc.pid
    assert not Run.objects.filter(job_id=buffered.id).exists()  # never started after it was lost
    for job in taken:  # the rightful owner's claim is untouched
        row = Job.objects.get(id=job.id)
        assert (row.status, row.locked_by, row.lock_token) == (
            JobStatus.RUNNING,
            "another-worker",
            job.lock_token,
        )
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 20) == 0


def test_a_few_short_jobs_before_an_idle_spell_do_not_grow_the_prefetch(workers):
    """Ten 1 ms jobs, then the worker idles, then slow jobs: the buffer stays at the threads' size
    (4 threads + 4), not the 200 that the short jobs' mean would allow."""
    proc = workers.start("--concurrency", "4")
    enqueue_many("test.noop", [{"key": str(i)} for i in range(10)])
    wait_for(
        lambda: Job.objects.filter(type="test.noop", status=JobStatus.SUCCEEDED).count() == 10,
        message="short jobs done",
    )
    time.sleep(2.5)  # the idle spell itself is what is under test
    enqueue_many("test.sleep", [{"key": str(i), "seconds": 0.3} for i in range(16)])
    wait_for(
        lambda: Job.objects.filter(type="test.sleep", status=JobStatus.SUCCEEDED).count() == 16,
        timeout=30,
        message="slow jobs done",
    )
    assert max(claim_sizes("test.sleep")) <= 8, claim_sizes("test.sleep")
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 20) == 0


def test_one_short_sample_does_not_size_the_prefetch(workers):
    proc = workers.start("--concurrency", "4")
    tick = enqueue("test.noop", {"key": "tick"})
    wait_for(lambda: Job.objects.get(id=tick.id).status == JobStatus.SUCCEEDED, message="tick done")
    enqueue_many("test.sleep", [{"key": str(i), "seconds": 0.3} for i in range(16)])
    wait_for(
        lambda: Job.objects.filter(type="test.sleep", status=JobStatus.SUCCEEDED).count() == 16,
        timeout=30,
        message="slow jobs done",
    )
    assert max(claim_sizes("test.sleep")) <= 8, claim_sizes("test.sleep")
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 20) == 0


@pytest.mark.skipif(
    "not __import__('jobs.db').db.is_postgres()", reason="SQLite's clock is its only host's clock"
)
@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian: apt-get install faketime)")
def test_a_host_whose_clock_runs_ahead_reaps_no_healthy_job_and_fires_cron_on_time(workers):
    job = enqueue("test.sleep", {"key": "healthy", "seconds": 5})
    healthy = workers.start("--stale-after", "2")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="the healthy worker started it")
    ahead = workers.start("--stale-after", "2", env=faketime("+30s"))
    wait_for(lambda: WorkerProcess.objects.filter(pid=ahead.pid).exists(), message="the skewed worker is up")
    due = db.now() + timedelta(seconds=3)
    CronSchedule.objects.create(  # due in 3 s, then not again this year: one fire however long this takes
        name="skew", expression="0 0 1 1 *", job_type="test.record", payload={"key": "cron"}, next_run_at=due
    )
    fired = Job.objects.filter(unique_key__startswith="cron:skew:")
    while True:  # one statement: a job it sees was committed before the time it reads
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT statement_timestamp() < %s, count(*) FROM jobs_job"
                " WHERE unique_key LIKE 'cron:skew:%%'",
                [due],
            )
            early, count = cursor.fetchone()
        if not early:
            break
        assert count == 0, "cron fired before its due time by the database's clock"
        time.sleep(0.05)
    wait_for(fired.exists, timeout=10, message="cron fired once due")

    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=20, message="done")
    job.refresh_from_db()
    assert (job.attempts, job.errors) == (1, [])  # never reaped
    assert Run.objects.filter(job_id=job.id).count() == 1
    assert WorkerProcess.objects.filter(pid=healthy.pid).exists()  # its row never removed
    assert fired.count() == 1
    for proc in (healthy, ahead):
        proc.send_signal(signal.SIGTERM)
        assert workers.exit_code(proc, 20) == 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: PostgreSQL")
@pytest.mark.parametrize("statement", ["complete", "heartbeat"])
def test_completions_and_heartbeats_lock_a_workers_jobs_in_the_order_of_their_ids(workers, statement):
    # The completer's batch and the claim loop's heartbeat update the same running jobs from two
    # connections: locking them in two orders deadlocked (seen in a 1,000,000-job run). Each now waits
    # for the lowest id first, holding no other row meanwhile.
    import threading

    import psycopg

    enqueue_many("test.record", [{"key": "low"}, {"key": "high"}])
    low, high = sorted(engine.claim("w", 2), key=lambda job: job.id)
    # The lower id's row version (and its index entries: priority is indexed, so this update is not HOT)
    # after the higher one's, so that neither the list's order nor the table's puts it first.
    Job.objects.filter(id=low.id).update(priority=F("priority") + 1)
    outcome = {}

    def run():  # the higher id first, as a batch or the unit table may list them
        try:
            if statement == "complete":
                outcome["done"] = engine.complete_many([(high, "h"), (low, "l")])
            else:
                outcome["done"] = engine.heartbeat([high, low])[0]
        finally:
            connection.close()

    with psycopg.connect(**db.listen_conninfo()) as holder:
        with holder.transaction():
            holder.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [low.id])
            thread = threading.Thread(target=run)
            thread.start()
            wait_for(
                lambda: holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
                ).fetchone()[0],
                message=f"the {statement} waiting for the lower id's row",
            )
            with psycopg.connect(**db.listen_conninfo()) as other:
                # The higher id's row is free: nothing holds it while waiting for the lower one.
                assert other.execute(
                    "SELECT id FROM jobs_job WHERE id = %s FOR UPDATE NOWAIT", [high.id]
                ).fetchone() == (high.id,)
        thread.join(30)
    assert not thread.is_alive()
    assert set(outcome["done"]) == {low.id, high.id}
