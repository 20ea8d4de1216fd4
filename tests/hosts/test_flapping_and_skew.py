"""A link that goes down and up under steady load, and hosts whose clocks disagree by a minute."""

import signal
import subprocess
import time

import pytest

from tests.hosts.conftest import exit_code, output, wait_until
from tests.hosts.test_partitions import STALE_AFTER, assert_effects_once, enqueue_effects, statuses
from tests.utils import LIBFAKETIME, faketime, manage_py

# (seconds down, seconds up): cuts shorter and longer than JOBS_STALE_AFTER (4 s), about 30 s in all
FLAPS = [(5, 3), (1, 2), (3, 2), (6, 3), (2, 2), (1, 2)]


def test_a_flapping_link_under_steady_load_loses_nothing_and_doubles_nothing(net):
    flapping, steady = net.hosts[0], net.hosts[1]
    workers = [
        net.worker(flapping, "flapping", "--concurrency", "3", "--stale-after", str(STALE_AFTER)),
        net.worker(steady, "steady", "--concurrency", "3", "--stale-after", str(STALE_AFTER)),
    ]
    # 200 jobs, 20 every 1.5 s from the root namespace, while the link flaps
    load = subprocess.Popen(
        [
            *manage_py(),
            "shell",
            "-c",
            "import time\nfrom jobs.api import enqueue_many\nfor n in range(10):\n"
            "    enqueue_many('test.slow_effect',"
            " [{'key': f'f-{n}-{i}', 'seconds': 0.1} for i in range(20)])\n"
            "    time.sleep(1.5)\n",
        ],
        env=net.env(net.db, "127.0.0.1"),
    )
    try:
        wait_until(
            lambda: net.sql("SELECT 1 FROM jobs_job WHERE locked_by = 'flapping'"), timeout=30, message="busy"
        )
        for down, up in FLAPS:  # the fault itself: the link's schedule
            flapping.cut()
            time.sleep(down)
            flapping.heal()
            time.sleep(up)
        assert load.wait(60) == 0
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    wait_until(lambda: statuses(net, "f") == {"succeeded": 200}, timeout=90, message="every job done")
    assert_effects_once(net, "f", 200)
    assert net.sql("SELECT count(*) FROM jobs_deadletter")[0][0] == 0
    for proc in workers:
        assert proc.poll() is None, output(proc)
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 30) == 0, output(proc)


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian: apt-get install faketime)")
def test_hosts_half_a_minute_apart_reap_no_healthy_job_and_run_cron_once_on_time(net):
    ahead, behind, right = net.hosts
    workers = [
        net.worker(
            ahead, "ahead", "--concurrency", "3", "--stale-after", str(STALE_AFTER), env=faketime("+30s")
        ),
        net.worker(
            behind, "behind", "--concurrency", "3", "--stale-after", str(STALE_AFTER), env=faketime("-30s")
        ),
        net.worker(right, "right", "--concurrency", "3", "--stale-after", str(STALE_AFTER)),
    ]
    wait_until(lambda: len(net.sql("SELECT id FROM jobs_workerprocess")) == 3, timeout=30, message="all up")
    enqueue_effects(net, "s", 9, 2.5 * STALE_AFTER)  # each outlives the stale limit 2.5 times
    wait_until(lambda: statuses(net, "s") == {"running": 9}, timeout=30, message="all nine running")
    net.sql(
        "INSERT INTO jobs_cronschedule (name, expression, time_zone, job_type, payload, enabled,"
        " declared_in_code, next_run_at, created_at, updated_at) VALUES ('skew', '* * * * *', 'UTC',"
        " 'test.record', '{\"key\": \"cron\"}', true, false, now() + interval '4 seconds', now(), now())"
        " RETURNING id"
    )
    (due,) = net.sql("SELECT next_run_at FROM jobs_cronschedule WHERE name = 'skew'")[0]
    fired = "SELECT count(*), min(created_at) FROM jobs_job WHERE unique_key LIKE 'cron:skew:%%'"
    while True:  # one statement: a job it sees was committed before the time it reads
        early, count = net.sql(
            "SELECT now() < %s, count(*) FROM jobs_job WHERE unique_key LIKE 'cron:skew:%%'", [due]
        )[0]
        if not early:
            break
        assert count == 0, "cron fired before its due time by the database's clock"
        time.sleep(0.05)
    wait_until(lambda: net.sql(fired)[0][0] == 1, timeout=15, message="cron fired once due")
    # Its next minute is not this test's (a slow machine can reach it below): stop the schedule, so that
    # only this due time is counted.
    net.sql("UPDATE jobs_cronschedule SET enabled = false WHERE name = 'skew' RETURNING id")

    wait_until(lambda: statuses(net, "s") == {"succeeded": 9}, timeout=60, message="all nine done")
    rows = net.sql("SELECT attempts, errors::text FROM jobs_job WHERE payload->>'key' LIKE 's-%%'")
    assert {(attempts, errors) for attempts, errors in rows} == {(1, "[]")}  # none reaped
    assert len(net.sql("SELECT id FROM jobs_workerprocess")) == 3  # no live worker's row removed
    assert net.sql(fired)[0][0] == 1
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 30) == 0, output(proc)
