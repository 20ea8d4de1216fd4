"""Workers on separate hosts lose the database's network and get it back: the cut-off worker notices
within seconds, says so once, keeps systemd's watchdog fed and exits 0 at SIGTERM; the others take its
jobs over; its late completions are fenced; it rejoins and claims again; no effect happens twice."""

import signal
import time

from tests.deploy.test_systemd_notify import NotifySocket
from tests.hosts.conftest import exit_code, output, wait_until
from tests.utils import manage_py

STALE_AFTER = 4.0  # heartbeat every second (a quarter of it)


def enqueue_effects(net, prefix: str, count: int, seconds: float) -> None:
    net.manage(
        net.db,
        "shell",
        "-c",
        "from jobs.api import enqueue_many; enqueue_many('test.slow_effect',"
        f" [{{'key': f'{prefix}-{{i}}', 'seconds': {seconds}}} for i in range({count})])",
    )


def statuses(net, prefix: str) -> dict[str, int]:
    rows = net.sql(
        "SELECT status, count(*) FROM jobs_job WHERE payload->>'key' LIKE %s GROUP BY status", [f"{prefix}-%"]
    )
    return dict(rows)


def running_on(net, worker_id: str) -> set[int]:
    return {
        r[0]
        for r in net.sql("SELECT id FROM jobs_job WHERE status = 'running' AND locked_by = %s", [worker_id])
    }


def assert_effects_once(net, prefix: str, count: int) -> None:
    effects = net.sql("SELECT key, count(*) FROM testapp_run WHERE key LIKE %s GROUP BY key", [f"{prefix}-%"])
    assert len(effects) == count and {n for _, n in effects} == {1}, effects


def test_a_cut_off_worker_notices_within_seconds_and_keeps_the_watchdog_fed(net):
    """Before READY as after it: a worker that starts while cut off waits (EXTEND_TIMEOUT_USEC), and
    says READY=1 only once the database answers."""
    host = net.hosts[0]
    running_sock, starting_sock = NotifySocket(), NotifySocket()

    def read_then(condition):
        # Notifications are stamped when read: keep reading while waiting, or a loaded machine's slow
        # wait would show as a gap between pings that the worker never left.
        running_sock.drain()
        starting_sock.drain()
        return condition()

    try:
        worker = net.worker(
            host, "cut", "--stale-after", str(STALE_AFTER), env={"NOTIFY_SOCKET": running_sock.address}
        )
        wait_until(lambda: "READY=1" in running_sock.lines(), timeout=30, message="READY")
        host.cut()
        cut_at = time.monotonic()
        late = net.worker(host, "late", env={"NOTIFY_SOCKET": starting_sock.address})
        wait_until(
            lambda: read_then(lambda: "database unavailable" in output(worker)),
            timeout=15,
            message="the cut-off worker noticed",
        )
        noticed = time.monotonic() - cut_at
        # Keep the link down for longer than systemd's watchdog waits for a silent loop, reading the
        # notifications as they come (each is stamped when read).
        while time.monotonic() - cut_at < 16:
            running_sock.drain()
            starting_sock.drain()
            time.sleep(0.05)
        lines = starting_sock.lines()
        assert "READY=1" not in lines and any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in lines), (
            lines
        )
        host.heal()
        wait_until(
            lambda: read_then(lambda: "database answers again" in output(worker)), timeout=20, message="back"
        )
        wait_until(
            lambda: read_then(lambda: "READY=1" in starting_sock.lines()),
            timeout=20,
            message="READY once it can work",
        )

        pings = [t for t in running_sock.times_of("WATCHDOG=1") if t >= cut_at]
        gaps = [b - a for a, b in zip([cut_at, *pings], pings, strict=False)]
        # WatchdogSec=30 in the unit: systemd asks for a ping every 15 s (half of it), and kills at 30 s.
        assert max(gaps) < 15, gaps
        assert noticed < 12, noticed
        assert output(worker).count("database unavailable") == 1, output(worker)
        assert worker.poll() is None and late.poll() is None
        for proc in (worker, late):
            proc.send_signal(signal.SIGTERM)
            assert exit_code(proc, 30) == 0, output(proc)
    finally:
        running_sock.close()
        starting_sock.close()


def test_a_partitioned_hosts_jobs_are_taken_over_fenced_and_done_once(net):
    a, b, c = net.hosts
    workers = {
        name: net.worker(host, name, "--concurrency", "3", "--stale-after", str(STALE_AFTER))
        for name, host in (("a", a), ("b", b), ("c", c))
    }
    enqueue_effects(net, "p", 45, 1.5)
    held = wait_until(lambda: running_on(net, "a"), timeout=30, message="host a runs jobs")
    a.cut()
    cut_at = time.monotonic()
    # Taken over by the others within JOBS_STALE_AFTER plus a heartbeat and a reaper pass (slack for a
    # loaded machine), and finished there.
    wait_until(
        lambda: not running_on(net, "a") & held,
        timeout=STALE_AFTER + 2 + 6,
        message="a's jobs handed back and claimed by b or c",
    )
    wait_until(lambda: statuses(net, "p") == {"succeeded": 45}, timeout=60, message="all done by b and c")
    wait_until(lambda: "database unavailable" in output(workers["a"]), timeout=15, message="a noticed")
    assert workers["a"].poll() is None, "the cut-off worker exited"
    assert time.monotonic() - cut_at < 60

    a.heal()
    wait_until(lambda: "database answers again" in output(workers["a"]), timeout=30, message="a is back")
    wait_until(
        lambda: net.sql("SELECT 1 FROM jobs_workerprocess WHERE id = 'a'"),
        timeout=15,
        message="a listed again",
    )
    assert output(workers["a"]).count("database unavailable") == 1
    # its late completions changed nothing: every job succeeded once, each effect happened once
    assert_effects_once(net, "p", 45)
    late = output(workers["a"]).count("claim lost")
    lost = net.sql("SELECT coalesce(sum(count), 0) FROM jobs_jobstat WHERE outcome = 'lost'")[0][0]
    assert late <= len(held) and lost >= late, (late, lost, len(held))

    for name in ("b", "c"):  # only a is left to claim: it must be working again
        workers[name].send_signal(signal.SIGTERM)
        assert exit_code(workers[name], 30) == 0, output(workers[name])
    enqueue_effects(net, "after", 6, 0.05)
    wait_until(lambda: statuses(net, "after") == {"succeeded": 6}, timeout=30, message="a claims again")
    assert net.sql("SELECT count(*) FROM jobs_deadletter")[0][0] == 0
    workers["a"].send_signal(signal.SIGTERM)
    assert exit_code(workers["a"], 30) == 0, output(workers["a"])


# A host's process locks a row in a transaction and keeps it open (a handler between two statements).
LOCK_AND_STAY = """
import threading
from django.db import connection, transaction
with transaction.atomic():
    connection.cursor().execute("SELECT 1 FROM shop_product WHERE sku = 'A' FOR UPDATE")
    print("locked", flush=True)
    threading.Event().wait(600)
"""


def test_a_host_cut_off_inside_a_transaction_holds_its_locks_for_seconds_not_for_ever(net):
    """The server learns that the client is gone as the client learns it of the server (keepalives,
    unacknowledged data): its session ends, its transaction rolls back and its row locks are free for
    the other hosts, instead of an idle session holding them until the server's TCP gives up (hours)."""
    import psycopg

    host = net.hosts[0]
    net.sql(
        "INSERT INTO shop_product (sku, name, description, price, currency, stock, active, created_at,"
        " updated_at) VALUES ('A', 'A', '', 9.50, 'EUR', 10, true, now(), now()) RETURNING id"
    )
    holder = host.popen(
        [*manage_py(), "shell", "-c", LOCK_AND_STAY],
        env=net.env(net.db, net.bridge_ip),
        log=net.log_dir / "lock-holder.log",
    )
    wait_until(lambda: "locked" in output(holder), timeout=30, message="the row locked on the host")

    def lockable() -> bool:
        with net.cluster.connect(net.db) as conn:
            conn.execute("SET lock_timeout = '200ms'")
            try:
                with conn.transaction():
                    conn.execute("SELECT 1 FROM shop_product WHERE sku = 'A' FOR UPDATE")
            except psycopg.errors.LockNotAvailable:
                return False
            return True

    assert not lockable()  # the host is alive: its lock holds
    host.cut()
    cut_at = time.monotonic()
    wait_until(lockable, timeout=60, interval=0.5, message="the cut-off host's lock released")
    released = time.monotonic() - cut_at
    # FAST_NETWORK: 2 s idle, then 2 probes 1 s apart; slack for a loaded machine.
    print(f"\nlock released {released:.1f}s after the cut")
    assert released < 20, released
    assert not net.sql("SELECT 1 FROM pg_stat_activity WHERE client_addr = %s", [host.address])
