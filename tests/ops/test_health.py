"""Health probes: /healthz answers without the database, /readyz with it (503 and a reason when the
database is slow or behind on migrations), and `manage.py jobs health` for a worker on this host."""

import signal
import subprocess

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

from tests.jobs.conftest import WorkerProcesses
from tests.utils import manage_py, subprocess_env, wait_for


@pytest.fixture
def workers(tmp_path):
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


def test_healthz_answers_from_the_loopback_without_session_or_https_redirect(settings):
    settings.SECURE_SSL_REDIRECT = True
    response = Client(REMOTE_ADDR="127.0.0.1").get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "sessionid" not in response.cookies and "csrftoken" not in response.cookies
    assert response["Cache-Control"] == "no-store"


def test_a_probe_from_elsewhere_is_redirected_to_https_unless_it_carries_the_probe_header(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.HEALTH_PROBE_HEADER = "X-Health-Probe"
    client = Client(REMOTE_ADDR="10.1.2.3")
    assert client.get("/healthz").status_code == 301
    response = client.get("/healthz", headers={"X-Health-Probe": "1"})
    assert response.status_code == 200, response.content


def test_healthz_answers_without_the_database():
    # No django_db mark: pytest-django makes any database access raise.
    assert Client().get("/healthz").status_code == 200


def test_healthz_is_never_rate_limited(settings):
    settings.API_RATE_LIMIT = "1/m"
    client = Client()
    assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5


@pytest.mark.django_db(transaction=True)
def test_readyz_is_ok_when_the_database_answers_and_every_migration_is_applied():
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_with_the_unapplied_migration_named():
    recorder = MigrationRecorder(connection)
    row = recorder.migration_qs.get(app="jobs", name="0006_job_trace_context")
    row.delete()
    try:
        response = Client().get("/readyz")
    finally:
        recorder.record_applied("jobs", "0006_job_trace_context")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "1 migration(s) not applied: jobs.0006_job_trace_context",
    }


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_when_the_database_does_not_answer_in_time(settings):
    if connection.vendor != "postgresql":
        pytest.skip("a SQLite reader is never kept waiting by a lock (WAL)")
    import psycopg

    from tests.utils import database_url

    settings.HEALTH_DB_TIMEOUT = 0.5
    holder = psycopg.connect(database_url())
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE django_migrations IN ACCESS EXCLUSIVE MODE")
        response = Client().get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "reason": "database did not answer within 0.5s"}
    finally:
        holder.rollback()
        holder.close()
    # The probe thread gets its answer once the lock is gone, and the next probe is ready again.
    wait_for(lambda: Client().get("/readyz").status_code == 200, timeout=10, message="readyz back to 200")


def test_the_request_id_is_echoed_or_generated():
    client = Client()
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"})["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "no spaces or\nnewlines"})["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()


def jobs_health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*manage_py(), "jobs", "health", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_jobs_health_is_0_while_a_worker_heartbeats_and_1_once_its_loop_stops(workers):
    absent = jobs_health()
    assert absent.returncode == 1
    assert absent.stderr.strip().startswith("CommandError: unhealthy: no worker registered on host")

    worker = workers.start(env={"JOBS_HEARTBEAT_INTERVAL": "0.2"})
    healthy = wait_for(
        lambda: (r := jobs_health("--max-heartbeat-age", "2")).returncode == 0 and r,
        timeout=30,
        message="jobs health exits 0",
    )
    assert healthy.stdout.startswith("ok: 1 worker(s) on ")

    worker.send_signal(signal.SIGSTOP)  # the process lives on, its claim loop does not
    try:
        stuck = wait_for(
            lambda: (r := jobs_health("--max-heartbeat-age", "1")).returncode == 1 and r,
            timeout=30,
            message="jobs health exits 1",
        )
        assert "last heartbeat" in stuck.stderr and "(more than 1s)" in stuck.stderr
        assert len(stuck.stderr.strip().splitlines()) == 1
    finally:
        worker.send_signal(signal.SIGCONT)
    worker.send_signal(signal.SIGTERM)
    assert workers.exit_code(worker, 30) == 0


@pytest.mark.django_db
def test_jobs_health_refuses_a_nonpositive_age():
    result = jobs_health("--max-heartbeat-age", "0")
    assert result.returncode == 1
    assert "must be a positive number of seconds" in result.stderr
