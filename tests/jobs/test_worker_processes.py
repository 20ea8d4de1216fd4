"""`runworker` as real processes against the real test database: signals, crashes, fencing."""

import collections
import re
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.api import enqueue, enqueue_many
from jobs.models import DeadLetter, Job, JobStatus, Priority, WorkerProcess
from tests.testapp.models import Run
from tests.utils import manage_py, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def statuses() -> collections.Counter:
    return collections.Counter(Job.objects.values_list("status", flat=True))


def test_two_workers_run_500_jobs_exactly_once_each(workers):
    a = workers.start("--concurrency", "2")
    b = workers.start("--concurrency", "2")
    # Both registered (so both claim) before the jobs exist, and each job outlasts a claim round trip:
    # 500 jobs of 20 ms are seconds of work for one worker, so the other cannot find the queue drained.
    wait_for(lambda: WorkerProcess.objects.count() == 2, timeout=60, message="both workers registered")
    jobs = enqueue_many("test.sleep", [{"key": str(i), "seconds": 0.02} for i in range(500)])
    wait_for(lambda: statuses() == {JobStatus.SUCCEEDED: 500}, timeout=120, message="every job done")
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, workers.output(proc)
    runs = collections.Counter(Run.objects.values_list("job_id", flat=True))
    assert set(runs) == {j.id for j in jobs}
    assert set(runs.values()) == {1}
    assert len(set(Run.objects.values_list("pid", flat=True))) == 2  # both took part


def test_worker_wakes_for_a_job_enqueued_while_it_idles(workers):
    proc = workers.start()
    wait_for(lambda: WorkerProcess.objects.exists(), message="worker registered")
    job = enqueue("test.record", {"key": "late"})
    failing = enqueue("test.permanent", {"key": "no"})
    for each, status in ((job, JobStatus.SUCCEEDED), (failing, JobStatus.DEAD)):
        wait_for(lambda j=each, s=status: Job.objects.get(id=j.id).status == s, message="jobs ran")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    out = workers.output(proc)
    assert "started" in out and "stopped" in out
    # At INFO a success is counted, not logged (a line per job would flood the log); a failure is logged.
    assert f"job {job.id} test.record attempt 1/5 succeeded" not in out
    assert f"job {failing.id} test.permanent attempt 1/5 dead" in out
    assert not WorkerProcess.objects.exists()


def test_a_worker_at_debug_logs_each_success(workers):
    job = enqueue("test.record", {"key": "seen"})
    proc = workers.start("--burst", env={"LOG_LEVEL": "DEBUG"})
    assert proc.wait(60) == 0
    assert f"job {job.id} test.record attempt 1/5 succeeded" in workers.output(proc)


def test_sigkill_mid_job_is_recovered_by_another_worker(workers):
    job = enqueue("test.sleep", {"key": "k", "seconds": 30})
    victim = workers.start("--stale-after", "2")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="victim started the job")
    victim.kill()
    victim.wait(10)
    Job.objects.filter(id=job.id).update(payload={"key": "k", "seconds": 0.1})
    killed_at = time.monotonic()
    rescuer = workers.start("--stale-after", "2")
    wait_for(
        lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=2 + 10, message="recovered"
    )
    assert time.monotonic() - killed_at < 2 + 10
    job.refresh_from_db()
    assert job.attempts == 2 and job.errors[0]["exception"] == "jobs.exceptions.WorkerLost"
    assert Run.objects.filter(job_id=job.id).count() == 2
    rescuer.terminate()
    assert rescuer.wait(20) == 0


def test_sigterm_lets_the_running_job_finish_and_exits_zero(workers):
    job = enqueue("test.sleep", {"key": "t", "seconds": 1.5})
    proc = workers.start("--grace-period", "20")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, workers.output(proc)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()


def test_job_outlasting_the_grace_period_is_handed_back_to_pending(workers):
    job = enqueue("test.sleep", {"key": "g", "seconds": 30})
    proc = workers.start("--grace-period", "0.5")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.attempts == 0 and job.locked_by is None


def test_second_signal_exits_at_once_and_recovery_picks_up_the_job(workers):
    job = enqueue("test.sleep", {"key": "s", "seconds": 30})
    proc = workers.start("--grace-period", "60")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in workers.output(proc), message="stopping logged")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) != 0
    assert Job.objects.get(id=job.id).status == JobStatus.RUNNING  # left for crash recovery


SIGNAL_WHILE_LOCKED = """
import os, signal
from jobs.worker import Worker
worker = Worker(plugins=[])
worker.install_signal_handlers()
with worker.wakeup._cond:  # where the claim loop is for an instant inside wakeup.wait()
    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, in this thread, with the lock held
    sum(range(1000))
print("handler returned", flush=True)
print("stopping" if worker.stopping.wait(10) else "not stopping", flush=True)
"""


def test_sigterm_while_the_loop_holds_its_wakeup_lock_still_stops_the_worker():
    # The signal handler runs between two bytecodes of the main thread. One that set the wakeup Event
    # itself deadlocked when that thread was inside the Event's wait (a worker that logged "SIGTERM
    # received, stopping" and never stopped).
    done = subprocess.run(
        [*manage_py(), "shell", "--no-imports", "-c", SIGNAL_WHILE_LOCKED],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["handler", "returned", "stopping"], done.stdout + done.stderr
    assert "SIGTERM received, stopping" in done.stderr


def test_healthy_long_job_is_never_claimed_by_a_second_worker(workers):
    job = enqueue("test.sleep", {"key": "long", "seconds": 4.5})  # 3x the 1.5 s stale limit
    first = workers.start("--stale-after", "1.5")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    second = workers.start("--stale-after", "1.5")
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=30, message="done")
    job.refresh_from_db()
    assert job.attempts == 1 and job.errors == []
    assert Run.objects.filter(job_id=job.id).count() == 1
    for proc in (first, second):
        proc.terminate()
        assert proc.wait(20) == 0


def test_frozen_worker_cannot_complete_a_job_another_worker_took(workers):
    job = enqueue("test.sleep", {"key": "frozen", "seconds": 1})
    frozen = workers.start("--stale-after", "1")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    workers.freeze(frozen)
    rescuer = workers.start("--stale-after", "1")
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=30, message="rescued")
    rescued = Job.objects.get(id=job.id)
    rescuer.terminate()
    assert rescuer.wait(20) == 0
    frozen.send_signal(signal.SIGCONT)
    wait_for(lambda: "claim lost" in workers.output(frozen), timeout=20, message="frozen worker fenced off")
    job.refresh_from_db()
    assert (job.status, job.attempts, job.finished_at) == (JobStatus.SUCCEEDED, 2, rescued.finished_at)
    assert job.locked_by is None


def test_job_that_kills_its_worker_every_time_ends_dead_without_a_crash_loop(workers):
    job = enqueue("test.suicide", {"key": "boom"})  # max_attempts=2
    starts = 0
    while Job.objects.get(id=job.id).status != JobStatus.DEAD:
        assert starts < 6, "the job never reached the dead letters"
        proc = workers.start("--stale-after", "1")
        starts += 1
        deadline = time.monotonic() + 15
        while proc.poll() is None and Job.objects.get(id=job.id).status != JobStatus.DEAD:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    survivor = workers.procs[-1]
    assert Run.objects.filter(job_id=job.id).count() == 2
    assert DeadLetter.objects.get(job_id=job.id).error_class == "jobs.exceptions.WorkerLost"
    # the worker that buried it stays up and keeps working
    assert survivor.poll() is None
    follow_up = enqueue("test.record", {"key": "after"})
    wait_for(lambda: Job.objects.get(id=follow_up.id).status == JobStatus.SUCCEEDED, message="still working")
    survivor.terminate()
    assert survivor.wait(20) == 0


def test_handler_past_its_timeout_is_failed_and_its_late_result_ignored(workers):
    job = enqueue("test.timeout", {"key": "slow", "seconds": 1.5})  # timeout 0.5 s, 2 attempts
    proc = workers.start("--concurrency", "1")
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.DEAD, timeout=30, message="dead")
    job.refresh_from_db()
    assert [e["exception"] for e in job.errors] == ["jobs.exceptions.JobTimeout"] * 2
    assert job.result is None
    wait_for(lambda: "outcome ignored" in workers.output(proc), timeout=10, message="late result ignored")
    proc.terminate()
    assert proc.wait(20) == 0


def test_handlers_raising_system_exit_or_keyboard_interrupt_fail_at_once_and_the_worker_lives_on(workers):
    # 12 such attempts on one thread: each used to kill its thread, leave its job running until the
    # 300 s timeout, and after 2 x 1 + 2 of them make the worker exit 1.
    jobs = [
        enqueue("test.raises", {"key": f"{kind}-{i}", "kind": kind})
        for kind in ("SystemExit", "KeyboardInterrupt")
        for i in range(3)
    ]
    proc = workers.start("--concurrency", "1")
    ids = [j.id for j in jobs]
    wait_for(
        lambda: Job.objects.filter(id__in=ids, status=JobStatus.DEAD).count() == len(ids),
        timeout=30,
        message="every job failed twice and went to the dead letters",
    )
    for job in Job.objects.filter(id__in=ids):
        kind = job.payload["kind"]
        assert job.attempts == 2 and [e["exception"] for e in job.errors] == [f"builtins.{kind}"] * 2
        assert f"{kind}" in job.errors[0]["traceback"] and "Traceback" in job.errors[0]["traceback"]
        assert DeadLetter.objects.get(job=job).error_class == f"builtins.{kind}"
    assert Run.objects.filter(job_id__in=ids).count() == 12  # retried per policy, nothing more
    follow_up = enqueue("test.record", {"key": "after"})
    wait_for(lambda: Job.objects.get(id=follow_up.id).status == JobStatus.SUCCEEDED, message="still working")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0
    assert "stuck past their timeout" not in workers.output(proc)


def test_burst_waits_for_rate_limited_jobs_and_drains_them_all(workers):
    jobs = enqueue_many("test.limited", [{"key": str(i)} for i in range(40)])  # 10/s
    proc = workers.start("--concurrency", "2", "--burst")
    assert workers.exit_code(proc, 60) == 0
    assert statuses() == {JobStatus.SUCCEEDED: 40}
    assert Run.objects.filter(job_id__in=[j.id for j in jobs]).count() == 40


def test_burst_waits_for_a_job_held_back_by_its_concurrency_key(workers):
    from jobs import engine

    holder = enqueue("test.keyed", {"group": "g", "key": "first"})
    (running,) = engine.claim("elsewhere-1-abc", 1)  # another worker runs it: the key is taken
    assert running.id == holder.id
    follower = enqueue("test.keyed", {"group": "g", "key": "second", "seconds": 0})
    proc = workers.start("--burst")
    wait_for(lambda: WorkerProcess.objects.exists(), message="burst worker registered")
    time.sleep(2)  # many empty claims (polls every 0.2 s): each used to end the burst
    assert proc.poll() is None, workers.output(proc)
    assert Job.objects.get(id=follower.id).status == JobStatus.PENDING
    assert engine.complete(running)  # the key is free
    assert workers.exit_code(proc, 60) == 0
    assert Job.objects.get(id=follower.id).status == JobStatus.SUCCEEDED
    assert Run.objects.get(job_id=follower.id).pid == proc.pid


def test_burst_exits_while_jobs_wait_only_for_a_later_time_or_a_paused_queue(workers):
    from jobs.models import QueueState

    enqueue("test.record", {"key": "later"}, delay=3600)
    QueueState.objects.create(name="paused", paused=True)
    enqueue("test.record", {"key": "held"}, queue="paused")
    proc = workers.start("--burst")
    assert workers.exit_code(proc, 60) == 0
    assert statuses() == {JobStatus.PENDING: 2}


def test_stale_worker_rows_are_cleaned_up(workers):
    WorkerProcess.objects.create(
        id="gone-1-abc", hostname="gone", pid=1, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    proc = workers.start("--stale-after", "1")
    wait_for(lambda: not WorkerProcess.objects.filter(id="gone-1-abc").exists(), message="stale row removed")
    proc.terminate()
    assert proc.wait(20) == 0


@pytest.mark.parametrize(
    "job_type, marker",
    [("test.cancellable", None), ("test.async_cancellable", "cancelled:c")],  # async: its coroutine too
    ids=["sync", "async"],
)
def test_cancelling_a_running_job_ends_it_cancelled(workers, job_type, marker):
    from jobs.api import cancel

    job = enqueue(job_type, {"key": "c"})
    proc = workers.start("--stale-after", "2")
    # Deadlines for a loaded machine (a worker's start-up alone can take seconds there), not timings.
    wait_for(lambda: Job.objects.get(id=job.id).progress == 50, timeout=60, message="job running")
    assert cancel(job.id, "customer changed their mind") == JobStatus.RUNNING
    wait_for(
        lambda: Job.objects.get(id=job.id).status == JobStatus.CANCELLED, timeout=60, message="cancelled"
    )
    job.refresh_from_db()
    assert job.status_reason == "customer changed their mind"
    assert marker is None or Run.objects.filter(key=marker).exists()  # the coroutine saw it cancelled
    assert not DeadLetter.objects.filter(job=job).exists()
    proc.terminate()
    assert proc.wait(20) == 0


def test_invalid_worker_options_are_refused(workers):
    proc = workers.start("--concurrency", "0")
    assert proc.wait(20) != 0
    assert "invalid" in workers.output(proc).lower()


def claim_sizes(job_type: str) -> list[int]:
    """Jobs per claim statement: one claim stamps all its jobs with the same started_at."""
    started = Job.objects.filter(type=job_type).values_list("started_at", flat=True)
    return sorted(collections.Counter(started).values(), reverse=True)


def test_short_jobs_are_claimed_many_per_statement(workers):
    enqueue_many("test.noop", [{"key": str(i)} for i in range(600)])
    proc = workers.start("--concurrency", "2", "--burst")
    assert workers.exit_code(proc, 120) == 0
    assert statuses() == {JobStatus.SUCCEEDED: 600}
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}
    sizes = claim_sizes("test.noop")
    # The first claim fills 2 threads + a prefetch of 2; once jobs prove short the buffer grows
    # (up to PREFETCH_MAX), so most jobs arrive in claims far larger than the threads.
    assert sizes[-1] >= 1 and sizes[0] > 4, sizes
    assert sizes[0] <= 2 + 200, sizes
    assert len(sizes) < 600 / 4, sizes


def test_slow_jobs_keep_the_prefetch_to_the_thread_count(workers):
    enqueue_many("test.sleep", [{"key": str(i), "seconds": 0.2} for i in range(12)])
    proc = workers.start("--concurrency", "2", "--burst")
    assert workers.exit_code(proc, 120) == 0
    assert statuses() == {JobStatus.SUCCEEDED: 12}
    assert max(claim_sizes("test.sleep")) <= 4  # threads + prefetch (as many as threads)


def test_sigterm_hands_back_the_prefetched_jobs_uncounted(workers):
    jobs = enqueue_many("test.sleep", [{"key": str(i), "seconds": 0.005} for i in range(400)])
    proc = workers.start("--concurrency", "2")
    wait_for(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() >= 60,
        message="the prefetch has grown for these short jobs",
    )
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0
    rows = Job.objects.filter(id__in=[j.id for j in jobs])
    assert not rows.filter(status=JobStatus.RUNNING).exists()
    left = rows.filter(status=JobStatus.PENDING)
    assert left.exists() and set(left.values_list("attempts", flat=True)) == {0}
    assert rows.filter(status=JobStatus.SUCCEEDED).count() + left.count() == 400
    runs = collections.Counter(Run.objects.values_list("job_id", flat=True))
    assert set(runs.values()) == {1}
    assert set(runs) == set(rows.filter(status=JobStatus.SUCCEEDED).values_list("id", flat=True))
    handed = re.search(r"(\d+) claimed job\(s\) handed back to pending", workers.output(proc))
    assert handed, workers.output(proc)[-3000:]
    back = left.filter(status_reason="handed back at shutdown")
    assert back.count() == int(handed.group(1)) >= 1


def test_a_fixed_prefetch_is_kept_for_short_jobs(workers):
    enqueue_many("test.noop", [{"key": str(i)} for i in range(200)])
    proc = workers.start("--concurrency", "2", "--prefetch", "0", "--burst")
    assert workers.exit_code(proc, 120) == 0
    assert statuses() == {JobStatus.SUCCEEDED: 200}
    assert max(claim_sizes("test.noop")) <= 2


def test_polling_carries_the_load_with_listen_notify_switched_off(workers):
    proc = workers.start(env={"JOBS_LISTEN_NOTIFY": "0"})
    wait_for(lambda: WorkerProcess.objects.exists(), message="worker registered")
    jobs = [enqueue("test.record", {"key": str(i)}) for i in range(5)]
    wait_for(
        lambda: Job.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.SUCCEEDED).count() == 5,
        message="jobs ran by polling",
    )
    proc.terminate()
    assert proc.wait(20) == 0


@pytest.mark.skipif("not __import__('jobs.db').db.is_postgres()", reason="needs a database server to lose")
def test_worker_rides_out_a_lost_database_and_resumes(workers):
    import psycopg
    from django.db import connection

    from jobs.db import listen_conninfo

    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (own_pid,) = cursor.fetchone()
    patience = 20.0
    if settings.DATABASE_POOLER == "pgbouncer":
        # This process keeps its client connection to PgBouncer whatever happens to the servers, so
        # every server goes; a worker's query then waits for one until PgBouncer's query_wait_timeout.
        from tests.pgbouncer import QUERY_WAIT_TIMEOUT

        own_pid, patience = 0, 20.0 + 3 * QUERY_WAIT_TIMEOUT
    admin = psycopg.connect(**{**listen_conninfo(), "dbname": "postgres"})
    proc = workers.start("--stale-after", "5")
    wait_for(lambda: WorkerProcess.objects.exists(), message="worker registered")
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
        [name, own_pid],
    )
    try:
        wait_for(
            lambda: "database unavailable" in workers.output(proc),
            timeout=patience,
            message="worker noticed the outage",
        )
        assert proc.poll() is None, "the worker crashed instead of retrying"
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    wait_for(answers, timeout=patience, message="the database answers this process again")
    job = enqueue("test.record", {"key": "after-outage"})
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=60, message="resumed")
    out = workers.output(proc)
    assert out.count("database unavailable") == 1, out  # one line per outage, not one per retry
    assert "database answers again" in out
    proc.terminate()
    assert proc.wait(20) == 0


def answers() -> bool:
    """Whether this process's connection answers, replacing it if it does not (behind PgBouncer its
    server went with the others, and PgBouncer logs in again within server_login_retry)."""
    from django.db import OperationalError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except OperationalError as exc:
        print(f"not yet: {exc}")
        connection.close()
        return False


def test_workers_add_their_counts_and_run_times_to_job_stats(workers):
    from jobs.models import JobStat

    enqueue_many("test.record", [{"key": str(i)} for i in range(20)])
    enqueue("test.permanent", {"key": "p"})
    proc = workers.start("--burst")
    assert proc.wait(60) == 0, workers.output(proc)
    started = JobStat.objects.get(type="test.record", outcome="started")
    assert started.count == 20
    succeeded = JobStat.objects.filter(type="test.record", outcome="succeeded")
    assert sum(s.count for s in succeeded) == 20 and all(s.bucket for s in succeeded)
    assert JobStat.objects.get(type="test.permanent", outcome="dead").count == 1


def test_a_high_priority_job_does_not_wait_behind_prefetched_low_priority_ones(workers):
    enqueue_many(
        "test.sleep", [{"key": f"low-{i}", "seconds": 0.002} for i in range(2000)], priority=Priority.LOW
    )
    proc = workers.start("--concurrency", "1")
    wait_for(
        lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() >= 100,
        message="the prefetch has grown for these short jobs",
    )
    high = enqueue("test.sleep", {"key": "high", "seconds": 0}, priority=Priority.HIGH)
    wait_for(lambda: Run.objects.filter(job_id=high.id).exists(), message="the high-priority job ran")
    proc.terminate()
    assert workers.exit_code(proc, 30) == 0
    claimed_at = Job.objects.get(id=high.id).started_at
    ran_at = Run.objects.get(job_id=high.id).started_at
    # Low-priority jobs already in the worker's buffer when the high-priority one was claimed, that
    # started between its claim and its start: at most one, taken by the thread as the claim returned.
    overtaking = Run.objects.filter(
        key__startswith="low-",
        started_at__gt=claimed_at,
        started_at__lt=ran_at,
        job_id__in=Job.objects.filter(started_at__lt=claimed_at).values("id"),
    )
    assert overtaking.count() <= 1, (overtaking.count(), ran_at - claimed_at)


@pytest.mark.skipif(
    "not __import__('jobs.db').db.is_postgres() or not settings.JOBS_LISTEN_NOTIFY",
    reason="LISTEN/NOTIFY: PostgreSQL without a transaction pooler",
)
def test_a_high_priority_job_enqueued_while_the_buffer_is_full_is_claimed_at_once(workers):
    enqueue_many(
        "test.sleep", [{"key": f"low-{i}", "seconds": 0.05} for i in range(200)], priority=Priority.LOW
    )
    proc = workers.start("--concurrency", "1", "--prefetch", "40")
    wait_for(lambda: Run.objects.exists(), message="the worker started on the low-priority jobs")
    highs = []
    for i in range(3):
        # each once the worker is running low-priority jobs with its buffer of 40 claimed ahead
        runs_before = 3 * i + 1
        wait_for(lambda n=runs_before: Run.objects.filter(key__startswith="low-").count() > n)
        key = f"high-{i}"
        highs.append(enqueue("test.sleep", {"key": key, "seconds": 0}, priority=Priority.HIGH))
        wait_for(lambda k=key: Run.objects.filter(key=k).exists(), timeout=60, message=f"{key} ran")
    proc.terminate()
    assert workers.exit_code(proc, 30) == 0
    # Counted, not timed: the low-priority jobs that started between a high one's enqueue and its start.
    # Without the claim the NOTIFY triggers it waits for the 40 claimed ahead of the thread; with it, for
    # the one running and at most a few more (one thread, a claim at most every 20 ms).
    overtaken = []
    for job in highs:
        started = Run.objects.get(job_id=job.id).started_at
        created = Job.objects.get(id=job.id).created_at
        overtaken.append(
            Run.objects.filter(key__startswith="low-", started_at__gt=created, started_at__lt=started).count()
        )
    assert max(overtaken) <= 5, overtaken
