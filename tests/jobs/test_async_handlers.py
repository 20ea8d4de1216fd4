"""`async def` handlers (jobs.aio): the same outcomes as sync handlers, on real runworker processes and
in-process (run_jobs); cancelled by their timeout and by staff at their next await."""

import concurrent.futures
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection

from jobs.api import enqueue, enqueue_many
from jobs.models import DeadLetter, Job, JobStatus, WorkerProcess
from jobs.testing import immediate, run_jobs
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Gathering:
    """An HTTP server on 127.0.0.1 that holds every GET until ``expected`` requests wait at once, then
    answers them all "together"; a request still alone after ``deadline`` seconds is answered 504. So a
    job's success proves that ``expected`` of them were in flight at the same moment, without timing."""

    def __init__(self, expected: int, deadline: float = 60):
        self.expected = expected
        self.waiting = 0
        self.most_waiting = 0
        self.arrived = threading.Condition()
        gathering = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with gathering.arrived:
                    gathering.waiting += 1
                    gathering.most_waiting = max(gathering.most_waiting, gathering.waiting)
                    gathering.arrived.notify_all()
                    together = gathering.arrived.wait_for(
                        lambda: gathering.most_waiting >= gathering.expected, timeout=deadline
                    )
                    gathering.waiting -= 1
                body = b"together" if together else b"alone"
                self.send_response(200 if together else 504)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def gathering():
    servers = []

    def start(expected: int) -> Gathering:
        servers.append(Gathering(expected))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_async_jobs_wait_on_the_network_at_once_up_to_the_concurrency(workers, gathering):
    server = gathering(8)
    jobs = enqueue_many("test.async_fetch", [{"key": f"k{i}", "port": server.port} for i in range(8)])
    proc = workers.start("--concurrency", "8", "--burst")
    assert workers.exit_code(proc, 120) == 0, workers.output(proc)
    rows = Job.objects.filter(id__in=[j.id for j in jobs])
    assert {(row.status, row.result) for row in rows} == {(JobStatus.SUCCEEDED, "together")}
    assert server.most_waiting == 8


def test_an_async_job_that_fails_is_retried_and_its_errors_kept(workers):
    job = enqueue("test.async_flaky", {"key": "f", "failures": 2})
    proc = workers.start()
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=60, message="done")
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0, workers.output(proc)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (JobStatus.SUCCEEDED, 3, "ok")
    assert [e["message"] for e in job.errors] == ["failure on attempt 1", "failure on attempt 2"]
    assert Run.objects.filter(key="f").count() == 3


def test_an_async_job_past_its_timeout_is_cancelled_and_its_attempt_recorded(workers):
    job = enqueue("test.async_stall", {"key": "slow"})
    proc = workers.start()
    wait_for(
        lambda: Job.objects.get(id=job.id).status == JobStatus.DEAD, timeout=60, message="timed out, dead"
    )
    # The coroutine itself was cancelled (its except block ran), not left running in the worker.
    wait_for(lambda: Run.objects.filter(key="cancelled:slow").exists(), timeout=30, message="cancelled")
    job.refresh_from_db()
    assert "JobTimeout" in job.errors[-1]["exception"]
    assert DeadLetter.objects.filter(job=job).exists()
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0, workers.output(proc)


def test_sigterm_lets_running_async_jobs_finish(workers):
    jobs = enqueue_many("test.async_sleep", [{"key": f"s{i}", "seconds": 1.5} for i in range(4)])
    proc = workers.start("--concurrency", "4")
    wait_for(lambda: Run.objects.count() == 4, timeout=60, message="all four started")
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 60) == 0, workers.output(proc)
    rows = Job.objects.filter(id__in=[j.id for j in jobs])
    assert {(row.status, row.attempts) for row in rows} == {(JobStatus.SUCCEEDED, 1)}
    assert not Run.objects.filter(finished_at=None).exists()
    assert not WorkerProcess.objects.exists()


def test_async_handlers_snooze_fail_for_good_use_the_orm_and_return_json_like_sync_ones():
    Run.objects.create(key="orm", job_id=0, attempt=1, pid=0, started_at="2026-01-01T00:00:00Z")
    jobs = {
        key: enqueue("test.async_outcomes", {"key": key})
        for key in ("plain", "snooze", "permanent", "orm", "unjsonable")
    }
    run_jobs()
    snoozed = Job.objects.get(id=jobs["snooze"].id)
    assert (snoozed.status, snoozed.snoozes) == (JobStatus.PENDING, 1)
    Job.objects.filter(id=snoozed.id).update(run_at=snoozed.created_at)
    run_jobs()
    rows = {key: Job.objects.get(id=job.id) for key, job in jobs.items()}
    assert (rows["plain"].status, rows["plain"].result) == (JobStatus.SUCCEEDED, {"attempt": 1})
    assert (rows["snooze"].status, rows["snooze"].result, rows["snooze"].attempts) == (
        JobStatus.SUCCEEDED,
        "snoozed once",
        1,
    )
    assert (rows["permanent"].status, rows["permanent"].attempts) == (JobStatus.DEAD, 1)
    assert (rows["orm"].status, rows["orm"].result) == (JobStatus.SUCCEEDED, 1)
    assert rows["unjsonable"].status == JobStatus.DEAD
    assert "not JSON-serialisable" in rows["unjsonable"].errors[-1]["message"]


def test_an_async_job_run_inline_from_async_code_reaches_the_orm_in_the_callers_thread():
    """Immediate mode entered from async code (a view, a README block): the job's coroutine runs on
    the caller's thread's loop and its ORM calls come back to that thread, without deadlocking on the
    outer async_to_sync."""
    Run.objects.create(key="orm", job_id=0, attempt=1, pid=0, started_at="2026-01-01T00:00:00Z")

    async def enqueue_inline() -> int:
        def run_inline() -> int:
            try:
                with immediate():
                    return enqueue("test.async_outcomes", {"key": "orm"}).id
            finally:
                connection.close()  # this pool thread's: the test database is dropped after the run

        return await sync_to_async(run_inline)()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job_id = pool.submit(async_to_sync(enqueue_inline)).result(timeout=60)
    job = Job.objects.get(id=job_id)
    assert (job.status, job.result) == (JobStatus.SUCCEEDED, 1)


def test_an_async_batch_handler_answers_for_each_job():
    jobs = enqueue_many("test.async_batch", [{"key": k} for k in ("a", "bad", "c")])
    run_jobs()
    rows = {row.payload["key"]: row for row in Job.objects.filter(id__in=[j.id for j in jobs])}
    assert {k: (r.status, r.result) for k, r in rows.items() if k != "bad"} == {
        "a": (JobStatus.SUCCEEDED, "A"),
        "c": (JobStatus.SUCCEEDED, "C"),
    }
    assert rows["bad"].status == JobStatus.DEAD
