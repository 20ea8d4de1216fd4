"""Behind PgBouncer in transaction pooling (DATABASE_POOLER=pgbouncer).

`.ci/run` runs the engine and order tests (tests/jobs, tests/orders) through a real PgBouncer that
tests/conftest.py starts (tests/pgbouncer.py: a pool of 3 server connections); the tests marked
``through_pgbouncer`` prove what only that run can. The settings test runs everywhere.
"""

import signal
import subprocess

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tasks import TaskResultStatus

from jobs.api import enqueue_many
from jobs.models import Job, WorkerProcess
from tests.pgbouncer import POOL_SIZE
from tests.testapp import tasks
from tests.testapp.models import Run
from tests.utils import manage_py, subprocess_env, wait_for

through_pgbouncer = pytest.mark.skipif(
    settings.DATABASE_POOLER != "pgbouncer",
    reason="needs DATABASE_POOLER=pgbouncer with PostgreSQL (.ci/run's PgBouncer run)",
)


def settings_with(**env: str) -> subprocess.CompletedProcess:
    code = (
        "from django.conf import settings; d = settings.DATABASES['default'];"
        " o = d['OPTIONS'];"
        " pooled = {k: o.get(k, '-') for k in ('prepare_threshold', 'server_side_binding')};"
        " print(d.get('DISABLE_SERVER_SIDE_CURSORS'), pooled, settings.JOBS_LISTEN_NOTIFY)"
    )
    return subprocess.run(
        [*manage_py(), "shell", "--no-imports", "-c", code],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_database_pooler_pgbouncer_turns_off_what_transaction_pooling_cannot_carry():
    url = "postgres://shop@db.internal:6432/shop"
    out = settings_with(DATABASE_URL=url, DATABASE_POOLER="pgbouncer")
    assert out.returncode == 0, out.stderr
    # server-side cursors off, no prepared statements, parameters bound on the client, no LISTEN
    assert out.stdout.strip() == "True {'prepare_threshold': None, 'server_side_binding': False} False"
    refused = settings_with(DATABASE_URL=url, DATABASE_POOLER="pgbouncer", JOBS_LISTEN_NOTIFY="1")
    assert refused.returncode != 0 and "JOBS_LISTEN_NOTIFY cannot work" in refused.stderr
    sqlite = settings_with(DATABASE_URL="sqlite:////tmp/x.sqlite3", DATABASE_POOLER="pgbouncer")
    assert sqlite.returncode != 0 and "needs a postgres:// DATABASE_URL" in sqlite.stderr
    direct = settings_with(DATABASE_URL=url, DATABASE_POOLER="")
    assert direct.returncode == 0 and direct.stdout.strip().endswith("True"), direct.stderr


@through_pgbouncer
@pytest.mark.django_db(transaction=True)
def test_this_session_and_its_workers_reach_the_database_through_pgbouncer(pgbouncer, workers):
    assert connection.settings_dict["PORT"] == pgbouncer.port
    name = connection.settings_dict["NAME"]
    proc = workers.start()
    wait_for(lambda: WorkerProcess.objects.exists(), message="worker registered")
    pool = next(p for p in pgbouncer.show("POOLS") if p["database"] == name)
    assert pool["pool_mode"] == "transaction"
    assert len([c for c in pgbouncer.show("CLIENTS") if c["database"] == name]) >= 2  # us and the worker
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0


@through_pgbouncer
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_more_jobs_at_once_than_pgbouncer_has_server_connections(pgbouncer, workers):
    threads = 8
    assert POOL_SIZE < threads
    keys = [f"held-{i}" for i in range(threads)]
    results = [tasks.hold.enqueue(key) for key in keys]  # each runs until its release row appears
    proc = workers.start("--concurrency", str(threads))
    wait_for(
        lambda: Run.objects.filter(key__in=keys).count() == threads,
        timeout=60,
        message=f"{threads} handlers running at once",
    )
    name = connection.settings_dict["NAME"]
    assert len([s for s in pgbouncer.show("SERVERS") if s["database"] == name]) <= POOL_SIZE
    for key in keys:
        Run.objects.create(key=f"release:{key}", job_id=0, attempt=0, pid=0, started_at=timezone.now())
    for result in results:
        wait_for(lambda r=result: r.refresh() or r.is_finished, timeout=30, message=f"{result.id} finished")
        assert result.status == TaskResultStatus.SUCCESSFUL and result.attempts == 1
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0


@through_pgbouncer
@pytest.mark.django_db(transaction=True)
def test_an_iterator_survives_another_client_taking_its_server_connection_mid_read(pgbouncer):
    enqueue_many("test.noop", [{"key": str(i)} for i in range(50)])
    rows = Job.objects.order_by("id").iterator(chunk_size=10)
    first = next(rows)
    # PgBouncer hands the server connection this process just released to the next client; with a
    # server-side cursor the next FETCH would go to another one ("cursor ... does not exist").
    with psycopg.connect(**pgbouncer.conninfo(connection.settings_dict["NAME"])) as other:
        other.execute("SELECT 1")  # inside its transaction: the server connection stays taken
        rest = list(rows)
    ids = list(Job.objects.order_by("id").values_list("id", flat=True))
    assert [first.id, *[job.id for job in rest]] == ids


@through_pgbouncer
@pytest.mark.django_db(transaction=True)
def test_the_admin_user_page_beside_idle_workers_never_fails(workers):
    admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
    for _ in range(2):
        workers.start("--concurrency", "2")
    wait_for(lambda: WorkerProcess.objects.count() == 2, message="two workers idling")
    client = Client()
    client.force_login(admin)
    codes = [client.get(f"/admin/auth/user/{admin.id}/change/").status_code for _ in range(30)]
    assert codes == [200] * 30


def test_the_server_is_given_the_clients_keepalives_except_through_pgbouncer():
    """The server's end of a connection finds a gone client as the client finds a gone server (see
    tests/hosts: a host cut off inside a transaction); PgBouncer passes no startup options."""
    code = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'].get('options'))"
    # No pooler unless the case says so (the PgBouncer pass of .ci/run sets DATABASE_POOLER for all).
    env = {
        "DATABASE_URL": "postgres://shop@db.internal:5432/shop",
        "DB_KEEPALIVES_IDLE": "7",
        "DATABASE_POOLER": "",
    }

    def options(**extra: str) -> str:
        done = subprocess.run(
            [*manage_py(), "shell", "--no-imports", "-c", code],
            env=subprocess_env(**{**env, **extra}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert options() == (
        "-c tcp_keepalives_idle=7 -c tcp_keepalives_interval=3 -c tcp_keepalives_count=3"
        " -c tcp_user_timeout=10000"
    )
    assert options(
        DATABASE_URL="postgres://shop@db.internal:5432/shop?options=-c%20work_mem%3D8MB"
    ).startswith("-c work_mem=8MB -c tcp_keepalives_idle=7")
    assert options(DATABASE_POOLER="pgbouncer") == "None"
