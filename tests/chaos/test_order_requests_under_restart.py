"""Orders through a real gunicorn (CONN_MAX_AGE=60) while the database is restarted under requests in
flight: clients that retry connection errors, 5xx and 409 with the same Idempotency-Key each end with
201 or 402, and the rows agree with every answer: one order per key, one charge per order, no order a
client was not told of, none left pending_payment, stock exact; paid orders are confirmed and fulfilled
by real workers that lived through the restarts. The database is a cluster of the test's own."""

import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from django.db import connection

from tests.chaos.conftest import free_port
from tests.jobs.conftest import WorkerProcesses
from tests.traffic import PRODUCTS, Traffic
from tests.utils import BASE_DIR, subprocess_env, wait_for

ORDERS = 160
CLIENTS = 8
INITIAL_STOCK = 1000
RESTARTS = 3
IN_FLIGHT_AT_RESTART = 2
CLIENT_DEADLINE = 120.0  # seconds one order's client keeps retrying
LEASE = 2.0  # IDEMPOTENCY_LEASE of the web processes: how long a dead request's key stays taken

pytestmark = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the PostgreSQL pass runs it (on a cluster of its own)"
)


def test_order_requests_in_flight_at_database_restarts_end_once_each(private_postgres, tmp_path):
    cluster, url = private_postgres
    with psycopg.connect(url, autocommit=True) as db:
        for n in range(PRODUCTS):
            db.execute(
                "INSERT INTO shop_product (sku, name, description, price, currency, stock, active,"
                " created_at, updated_at) VALUES (%s, %s, '', 9.50, 'EUR', %s, true, now(), now())",
                [f"RST-{n}", f"Restart product {n}", INITIAL_STOCK],
            )
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    env = {
        "DATABASE_URL": url,
        "CONN_MAX_AGE": "60",
        "IDEMPOTENCY_LEASE": str(LEASE),
        "EMAIL_URL": f"filemail://{mail_dir}",
        "MEDIA_ROOT": str(tmp_path / "media"),
    }
    port = free_port()
    web_log = open(tmp_path / "gunicorn.log", "wb")
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "shop.wsgi:application",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "3",
            "--threads",
            "3",
            "--timeout",
            "90",
        ],
        cwd=BASE_DIR,
        stdout=web_log,
        stderr=subprocess.STDOUT,
        env=subprocess_env(**env),
    )
    workers = WorkerProcesses(tmp_path)
    try:
        crew = [workers.start("--stale-after", "2", env=env) for _ in range(2)]
        traffic = Traffic(f"http://127.0.0.1:{port}", key_prefix="restart", deadline=CLIENT_DEADLINE)

        def web_up() -> bool:
            try:
                urllib.request.urlopen(traffic.base_url + "/api/orders/none", timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code == 404
            except OSError:
                return False
            return False

        wait_for(web_up, timeout=60, message="gunicorn serving")
        clients = [
            threading.Thread(target=traffic.client, args=(range(c, ORDERS, CLIENTS),)) for c in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()

        restarts = []
        pace = random.Random()
        for n in range(RESTARTS):
            # Spread over the load: after about 1/4, 2/4 and 3/4 of the orders were answered.
            wait_for(lambda n=n: len(traffic.answers) >= ORDERS * (n + 1) // (RESTARTS + 1), timeout=300)
            wait_for(lambda: traffic.in_flight >= IN_FLIGHT_AT_RESTART, timeout=30, interval=0.001)
            in_flight = traffic.in_flight
            restarts.append((in_flight, cluster.restart()))
            time.sleep(pace.uniform(0.5, 1.5))  # pacing between two blows, not a wait for an outcome
        for thread in clients:
            thread.join(CLIENT_DEADLINE + 60)
        assert not any(thread.is_alive() for thread in clients)

        # Every client ended with 201 or 402.
        answers = traffic.answers
        assert len(answers) == ORDERS
        odd = {i: a for i, a in answers.items() if a[0] not in (201, 402)}
        assert not odd, odd
        for i, (status, body) in answers.items():
            assert status == (402 if i % 8 == 0 else 201), (i, status, body)

        with psycopg.connect(url, autocommit=True) as db:
            keys = dict(
                db.execute(
                    "SELECT k.key, o.number FROM orders_idempotencykey k"
                    " LEFT JOIN orders_order o ON o.id = k.order_id WHERE k.recovery_point = 'finished'"
                ).fetchall()
            )
            assert db.execute("SELECT count(*) FROM orders_idempotencykey").fetchone()[0] == ORDERS
            orders = dict(db.execute("SELECT number, status FROM orders_order").fetchall())
            charges = db.execute(
                "SELECT idempotency_key, count(*), bool_or(succeeded) FROM orders_fakegatewaycharge"
                " GROUP BY idempotency_key"
            ).fetchall()
            sold = dict(
                db.execute(
                    "SELECT l.sku, sum(l.quantity) FROM orders_orderline l"
                    " JOIN orders_order o ON o.id = l.order_id"
                    " WHERE o.status <> 'payment_failed' GROUP BY l.sku"
                ).fetchall()
            )
            stock = dict(db.execute("SELECT sku, stock FROM shop_product").fetchall())
            reserved = db.execute(
                "SELECT count(*) FROM orders_order WHERE stock_reserved AND status = 'payment_failed'"
            ).fetchone()[0]

        # No stuck key: every key finished with its order, no key with two orders, no order without a key.
        told = traffic.told()
        assert keys == told
        assert sorted(orders) == sorted(told.values())  # one order per key; no order a client was not told of
        # No double charge, no charge without an order; the statuses are what the clients were told.
        assert all(count == 1 for _, count, _ in charges) and {k for k, _, _ in charges} == set(orders)
        for i, (status, _) in answers.items():
            number = told[traffic.key(i)]
            assert orders[number] in (("payment_failed",) if status == 402 else ("paid", "fulfilled")), number
        assert sum(1 for _, _, ok in charges if ok) == sum(1 for s, _ in answers.values() if s == 201)
        assert "pending_payment" not in orders.values()
        # Stock exact: what the paid orders took, nothing held by a failed one.
        for n in range(PRODUCTS):
            assert stock[f"RST-{n}"] == INITIAL_STOCK - sold.get(f"RST-{n}", 0)
        assert reserved == 0

        # The customers are told: each paid order confirmed by email and fulfilled by the workers.
        paid = {n for n, s in orders.items() if s != "payment_failed"}

        def fulfilled() -> bool:
            with psycopg.connect(url, autocommit=True) as db:
                done = db.execute(
                    "SELECT count(*) FROM orders_order o JOIN orders_orderemail e ON e.order_id = o.id"
                    " WHERE o.status = 'fulfilled' AND e.kind = 'confirmation'"
                ).fetchone()[0]
            return done == len(paid)

        wait_for(fulfilled, timeout=120, interval=0.2, message="every paid order confirmed and fulfilled")
        assert all(proc.poll() is None for proc in crew), "a worker died with the database"
        for proc in crew:
            proc.terminate()
        for proc in crew:
            assert proc.wait(30) == 0, workers.output(proc)[-3000:]
        print(
            f"\n[{connection.vendor}, private cluster] orders {ORDERS}, restarts (in flight, seconds down):"
            f" {[(n, round(s, 2)) for n, s in restarts]}, retries by cause: {dict(traffic.retried)}"
        )
    finally:
        workers.stop_all()
        web.terminate()
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
        web_log.close()
