import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.utils import manage_py, subprocess_env


class WorkerProcesses:
    """Starts real `manage.py runworker` processes against the test database; kills leftovers."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        n = len(self.procs)
        log = open(self.log_dir / f"worker-{n}.log", "wb")
        cmd = [*manage_py(), "runworker", "--poll-interval", "0.05", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(**(env or {})))
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")

    def exit_code(self, proc: subprocess.Popen, timeout: float) -> int:
        """The process's exit code once it exits; fails with its log if it is still alive after
        ``timeout`` seconds."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.output(proc)[-5000:]}") from None

    def freeze(self, proc: subprocess.Popen, timeout: float = 30) -> None:
        """SIGSTOP ``proc`` at a moment it holds no write lock. SQLite has one lock for the whole
        database: a worker frozen inside a write transaction (a claim, a heartbeat, an alert's
        evaluation) would hold every other writer off, this test's enqueues included, which no frozen
        host does to PostgreSQL. So it is frozen, and thawed and frozen again while a write of its own
        is open."""
        from django.db import connection

        deadline = time.monotonic() + timeout
        while True:
            proc.send_signal(signal.SIGSTOP)
            if connection.vendor != "sqlite" or _sqlite_writable(connection.settings_dict["NAME"]):
                return
            proc.send_signal(signal.SIGCONT)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {proc.pid} held SQLite's write lock at every try for {timeout}s"
                )
            time.sleep(0.01)  # let it finish that write

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(tmp_path):
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


def _sqlite_writable(path: str) -> bool:
    """Whether no other connection holds the database's write lock (BEGIN IMMEDIATE takes it at once)."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        return False
    finally:
        probe.close()
