"""The chaos suite's helpers: a fixed crew of real `runworker` processes of which a random one is
SIGKILLed (and replaced) every few seconds, and a PostgreSQL cluster of the test's own to restart."""

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.jobs.conftest import WorkerProcesses
from tests.utils import manage_py, subprocess_env, wait_for


class Crew:
    """``size`` worker processes started with the same arguments; ``kill_random()`` SIGKILLs one of
    them and starts its replacement at once, as a supervisor (systemd's Restart=always) would."""

    def __init__(self, procs: WorkerProcesses, size: int, args: list[str], env: dict[str, str], seed: int):
        self.procs = procs
        self.args = args
        self.env = env
        self.random = random.Random(seed)
        self.kills = 0
        self.members = [procs.start(*args, env=env) for _ in range(size)]

    def kill_random(self):
        """SIGKILL a random member, restart it; returns the killed process."""
        index = self.random.randrange(len(self.members))
        victim = self.members[index]
        victim.kill()
        victim.wait(10)
        self.kills += 1
        self.members[index] = self.procs.start(*self.args, env=self.env)
        return victim

    def logs(self) -> str:
        return "\n".join(self.procs.output(p) for p in self.procs.procs)

    def stop(self) -> None:
        """SIGTERM every member; each must exit 0. (A replacement still importing Django has no handler
        for SIGTERM yet: wait until it says it started.)"""
        wait_for(
            lambda: all(" started: " in self.procs.output(p) for p in self.members),
            timeout=30,
            message="every worker started",
        )
        for proc in self.members:
            proc.terminate()
        for proc in self.members:
            assert proc.wait(30) == 0, self.procs.output(proc)[-3000:]


@pytest.fixture
def crew(tmp_path):
    """``crew(size, *args, env=...)``: a Crew of runworker processes, killed after the test."""
    procs = WorkerProcesses(tmp_path)
    seed = random.randrange(1 << 30)
    print(f"\nchaos seed {seed}")

    def start(size: int, *args: str, env: dict[str, str] | None = None) -> Crew:
        return Crew(procs, size, list(args), env or {}, seed)

    yield start
    procs.stop_all()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: ``initdb`` into a temporary directory, its own port and
    socket directory, run as the ``postgres`` user when the test runs as root. Restarting it cuts every
    connection to it and never touches the machine's server."""

    def __init__(self):
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        if not versions:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) to run a private cluster")
        self.bin = versions[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120
        )

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", self._options(), "-w", "start"
        )

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every session is cut at once, whatever it is doing. Returns the
        seconds until the server accepted connections again."""
        started = time.monotonic()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            self._options(),
            "-m",
            "fast",
            "-w",
            "restart",
        )
        return time.monotonic() - started

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
        return self.url(dbname)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_postgres():
    """A migrated database on a PostgreSQL cluster of the test's own (see PrivatePostgres); yields
    ``(cluster, database_url)``. Stopped and removed at the end, also after a failure."""
    cluster = PrivatePostgres()
    try:
        url = cluster.create_database("shop")
        subprocess.run(
            [*manage_py(), "migrate", "--noinput"],
            check=True,
            capture_output=True,
            timeout=300,
            env=subprocess_env(DATABASE_URL=url),
        )
        yield cluster, url
    finally:
        cluster.stop()
