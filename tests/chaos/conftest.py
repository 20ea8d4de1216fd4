"""The chaos suite's helpers: a fixed crew of real `runworker` processes of which a random one is
SIGKILLed (and replaced) every few seconds, and a PostgreSQL server that can be restarted."""

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.jobs.conftest import WorkerProcesses
from tests.utils import wait_for

PG_VERSION_DIRS = Path("/etc/postgresql")


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


def restart_postgresql() -> float:
    """Restart the local PostgreSQL cluster (every connection to it is cut), wait until it accepts
    connections again; returns the seconds it was away. The calling thread's connection is closed."""
    versions = sorted(p.name for p in PG_VERSION_DIRS.iterdir() if (p / "main").is_dir())
    assert versions, "no local PostgreSQL cluster to restart"
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    connection.close()
    wait_for(
        lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0,
        timeout=60,
        interval=0.1,
        message="PostgreSQL accepting connections again",
    )
    return time.monotonic() - started


def can_restart_postgresql() -> bool:
    return PG_VERSION_DIRS.is_dir() and shutil.which("pg_ctlcluster") is not None
