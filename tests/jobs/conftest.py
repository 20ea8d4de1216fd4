import signal
import subprocess
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
