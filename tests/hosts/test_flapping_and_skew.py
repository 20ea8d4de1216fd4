"""A link that goes down and up, both ways or one way, under a steady load of orders; and hosts whose
clocks disagree by half a minute."""

import shutil
import signal
import threading
import time

import pytest

from tests.hosts.conftest import exit_code, output, wait_until
from tests.hosts.test_partitions import STALE_AFTER, enqueue_effects, statuses
from tests.traffic import PRODUCTS, Traffic
from tests.utils import LIBFAKETIME, faketime

# (which host, what befalls its link, seconds so, seconds healed after): about a minute in all, cuts
# shorter and longer than JOBS_STALE_AFTER (4 s). "cut" takes the link down; "deafen" drops only what
# the database sends (the host's statements arrive and commit, their answers do not), "mute" only what
# the host sends.
FLAPS = [
    ("worker", "cut", 5, 3),
    ("web", "cut", 2, 2),
    ("worker", "deafen", 6, 3),
    ("both", "cut", 1, 2),
    ("worker", "mute", 3, 2),
    ("web", "deafen", 3, 3),
    ("worker", "cut", 6, 3),
    ("both", "deafen", 2, 2),
    ("web", "mute", 5, 3),
    ("worker", "deafen", 1, 2),
    ("both", "cut", 3, 3),
]
CLIENTS = 4
PAUSE = 0.5  # seconds between a client's answer and its next order
CLIENT_DEADLINE = 150.0  # seconds one order's client keeps retrying
DRAIN_LIMIT = 120.0  # seconds from the last answer to every paid order fulfilled
STOCK = 100_000  # of each product
PIPELINE_STEPS = ("confirmation", "invoice", "inventory", "fulfilled")


@pytest.mark.skipif(
    not shutil.which("nft"), reason="needs nftables for one-way links (apt-get install nftables)"
)
def test_a_flapping_and_one_way_link_under_a_steady_load_of_orders_loses_nothing_and_doubles_nothing(net):
    """Clients in the root namespace post orders to gunicorn on the web host over the bridge, so a cut of
    the web host's link stalls them as well as its database connections; they retry connection errors,
    5xx and 409 with the same key, as a careful integration does. Every paid order must reach the end
    of its pipeline with no dead letter and no job left behind."""
    flapping, steady, web = net.hosts
    for n in range(PRODUCTS):
        net.sql(
            "INSERT INTO shop_product (sku, name, description, price, currency, stock, active, created_at,"
            " updated_at) VALUES (%s, %s, '', 9.50, 'EUR', %s, true, now(), now()) RETURNING id",
            [f"RST-{n}", f"Product {n}", STOCK],
        )
    effects = {
        "EMAIL_URL": f"filemail://{net.log_dir / net.db / 'mail'}",
        "MEDIA_ROOT": str(net.log_dir / net.db),
    }
    workers = [
        net.worker(h, name, "--concurrency", "3", "--stale-after", str(STALE_AFTER), env=effects)
        for h, name in ((flapping, "flapping"), (steady, "steady"))
    ]
    net.web(web, "-w", "2", "--threads", "2", env={"CONN_MAX_AGE": "60", "IDEMPOTENCY_LEASE": "2"})
    traffic = Traffic(f"http://{web.address}:8000", key_prefix="flap", deadline=CLIENT_DEADLINE)
    done = threading.Event()
    clients = [
        threading.Thread(
            target=traffic.client, args=(range(c, 10**6, CLIENTS),), kwargs={"until": done, "pause": PAUSE}
        )
        for c in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    try:
        wait_until(
            lambda: net.sql("SELECT 1 FROM jobs_job WHERE locked_by = 'flapping'"), timeout=60, message="busy"
        )
        hosts = {"worker": [flapping], "web": [web], "both": [flapping, web]}
        for which, fault, down, up in FLAPS:  # the fault itself: the links' schedule
            for host in hosts[which]:
                getattr(host, fault)()
            time.sleep(down)
            for host in hosts[which]:
                host.heal()
            time.sleep(up)
    finally:
        done.set()
        for thread in clients:
            thread.join(CLIENT_DEADLINE + 60)
    assert not any(thread.is_alive() for thread in clients)
    answered = time.monotonic()

    # Every client ended with 201, or 402 for a declined card.
    answers = traffic.answers
    odd = {i: answer for i, answer in answers.items() if answer[0] != (402 if i % 8 == 0 else 201)}
    assert not odd, odd
    # The rows agree with the answers: one order per key, no order a client was not told of, one charge
    # per order, and the statuses the clients were told.
    told = traffic.told()
    keys = dict(
        net.sql(
            "SELECT k.key, o.number FROM orders_idempotencykey k"
            " LEFT JOIN orders_order o ON o.id = k.order_id WHERE k.recovery_point = 'finished'"
        )
    )
    assert keys == told
    assert net.sql("SELECT count(*) FROM orders_idempotencykey")[0][0] == len(answers)
    orders = dict(net.sql("SELECT number, status FROM orders_order"))
    assert sorted(orders) == sorted(told.values())
    charges = net.sql(
        "SELECT idempotency_key, count(*), bool_or(succeeded) FROM orders_fakegatewaycharge"
        " GROUP BY idempotency_key"
    )
    assert all(count == 1 for _, count, _ in charges) and {k for k, _, _ in charges} == set(orders)
    paid = {told[traffic.key(i)] for i, (status, _) in answers.items() if status == 201}
    assert {number for number, _, ok in charges if ok} == paid
    assert {orders[n] for n in set(orders) - paid} <= {"payment_failed"}
    sold = net.sql(
        "SELECT l.sku, sum(l.quantity) FROM orders_orderline l JOIN orders_order o ON o.id = l.order_id"
        " WHERE o.status <> 'payment_failed' GROUP BY l.sku"
    )
    stock = dict(net.sql("SELECT sku, stock FROM shop_product"))
    assert stock == {sku: STOCK - dict(sold).get(sku, 0) for sku in stock}  # taken once, by paid orders

    # Every paid order goes all the way: confirmed, invoiced, synced, fulfilled.
    fulfilled = "SELECT count(*) FROM orders_order WHERE status = 'fulfilled'"
    wait_until(
        lambda: net.sql(fulfilled)[0][0] == len(paid),
        timeout=DRAIN_LIMIT,
        interval=0.5,
        message=f"{len(paid)} paid orders fulfilled",
    )
    drained = time.monotonic() - answered
    assert {orders[n] for n in paid} <= {"paid", "fulfilled"}
    assert dict(net.sql("SELECT number, status FROM orders_order WHERE number = ANY(%s)", [list(paid)])) == {
        n: "fulfilled" for n in paid
    }
    # No job lost or left behind, none failed, no dead letter: each step of each paid order ran once and
    # succeeded.
    settled = (
        "SELECT count(*) FROM jobs_job WHERE status IN ('running', 'blocked')"
        " OR (status = 'pending' AND run_at <= now())"
    )
    wait_until(lambda: net.sql(settled)[0][0] == 0, timeout=60, interval=0.5, message="every job finished")
    steps = net.sql("SELECT j.unique_key, j.status FROM jobs_job j WHERE j.unique_key LIKE 'order:%%'")
    expected = {
        (f"order:{order_id}:{step}", "succeeded")
        for (order_id,) in net.sql("SELECT id FROM orders_order WHERE status = 'fulfilled'")
        for step in PIPELINE_STEPS
    }
    assert sorted(steps) == sorted(expected)
    leftovers = net.sql(
        "SELECT id, type, status FROM jobs_job WHERE status <> 'succeeded'"
        " AND NOT (status = 'pending' AND run_at > now())"  # a cron job's next time
    )
    assert not leftovers, leftovers
    assert net.sql("SELECT count(*) FROM jobs_deadletter")[0][0] == 0
    # Effects inside the database: exactly once.
    for table in ("orders_invoice", "orders_inventorysync", "orders_orderemail"):
        made = net.sql(f"SELECT o.number FROM {table} t JOIN orders_order o ON o.id = t.order_id")
        assert sorted(n for (n,) in made) == sorted(paid), table
    for proc in workers:
        assert proc.poll() is None, output(proc)
        proc.send_signal(signal.SIGTERM)
        assert exit_code(proc, 30) == 0, output(proc)
    (errors,) = net.sql("SELECT count(*) FROM jobs_job WHERE errors <> '[]'::jsonb")[0]
    print(
        f"\norders {len(answers)} ({len(paid)} paid), retries by cause: {dict(traffic.retried)}, jobs with"
        f" a failed attempt {errors}, fulfilled {drained:.1f}s after the last answer; 'database unavailable'"
        f" in the steady worker's log: {output(workers[1]).count('database unavailable')}"
    )


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
