"""runworker under Type=notify: READY first, WATCHDOG from every pass of the claim loop (idle or busy),
STATUS with the jobs running, STOPPING at SIGTERM; checked on a real AF_UNIX datagram socket."""

import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from jobs.api import enqueue
from jobs.models import Job, JobStatus
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class NotifySocket:
    """What systemd listens on: a datagram socket; each datagram is newline-separated KEY=VALUE lines."""

    def __init__(self, abstract: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))  # short: AF_UNIX paths are limited
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"shop-test-{self.dir.name}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(self.dir / "notify.sock")
            self.sock.bind(self.address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self) -> list[tuple[float, list[str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def lines(self) -> list[str]:
        return [line for _, lines in self.drain() for line in lines]

    def times_of(self, line: str) -> list[float]:
        return [at for at, lines in self.drain() if line in lines]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def test_worker_sends_ready_then_watchdog_status_and_stopping(workers, notify_socket):
    proc = workers.start("--grace-period", "10", env={"NOTIFY_SOCKET": notify_socket.address})
    wait_for(lambda: notify_socket.drain(), message="first notification")
    first = notify_socket.messages[0][1]
    assert first[0] == "READY=1" and first[1].startswith("STATUS=worker ")

    wait_for(lambda: len(notify_socket.times_of("WATCHDOG=1")) >= 10, message="watchdog while idle")
    assert "STATUS=0 job(s) running" in notify_socket.lines()

    job = enqueue("test.sleep", {"key": "busy", "seconds": 3})
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="job started")
    busy_from = time.monotonic()
    wait_for(lambda: "STATUS=1 job(s) running" in notify_socket.lines(), message="status while busy")
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, message="job done")
    # the busy loop pings too, once a second (not on every pass: hundreds a second under load)
    assert len([t for t in notify_socket.times_of("WATCHDOG=1") if t > busy_from]) >= 2

    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 20) == 0, workers.output(proc)
    lines = notify_socket.lines()
    assert "STOPPING=1" in lines
    assert lines.index("READY=1") == 0 and lines.index("STOPPING=1") > lines.index("WATCHDOG=1")
    assert "WATCHDOG=1" not in lines[lines.index("STOPPING=1") :]


def test_watchdog_gaps_stay_well_within_the_units_budget_when_idle(workers, notify_socket):
    """systemd needs a ping at least every WatchdogSec/2; the idle loop waits at most the poll interval
    between passes, and a pass pings when the last ping is a second old, so gaps are about poll + 1 s.
    The bound is a third of the unit's budget: it fails if the idle loop stops pinging on its own, not
    when a loaded machine delays one pass by a few milliseconds."""
    unit = (Path(__file__).resolve().parents[2] / "deploy" / "shop-worker@.service").read_text()
    budget = int(re.search(r"^WatchdogSec=(\d+)$", unit, re.M)[1]) / 2
    proc = workers.start("--poll-interval", "0.5", env={"NOTIFY_SOCKET": notify_socket.address})
    wait_for(lambda: len(notify_socket.times_of("WATCHDOG=1")) >= 8, message="eight watchdog pings")
    pings = notify_socket.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < budget / 3, gaps
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_an_abstract_notify_socket_is_supported(workers):
    sock = NotifySocket(abstract=True)
    try:
        proc = workers.start(env={"NOTIFY_SOCKET": sock.address})
        wait_for(lambda: "READY=1" in sock.lines(), message="READY on the abstract socket")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "STOPPING=1" in sock.lines()
    finally:
        sock.close()


def test_without_notify_socket_the_worker_runs_and_stops_normally(workers):
    proc = workers.start(env={"NOTIFY_SOCKET": ""})
    job = enqueue("test.record", {"key": "plain"})
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, message="job ran")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
