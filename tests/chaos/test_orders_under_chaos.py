"""300 orders through the real API while three real `runworker` processes are SIGKILLed one at a time
every few seconds: each order is still processed exactly once, in bounded time, and nothing of the
chaos reaches a customer. (Database restarts under requests in flight, and workers riding them out, are
test_order_requests_under_restart's, on a cluster of its own.)"""

import collections
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from email import message_from_bytes

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from jobs.models import DeadLetter, Job, JobStatus
from orders.models import InventorySync, Invoice, Order, OrderLine, Product, WebhookEndpoint
from orders.pipeline import job_key
from tests.factories import ProductFactory
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = 300
CLIENTS = 6
PRODUCTS = 3
INITIAL_STOCK = 1000
PAUSE_BETWEEN_KILLS = (2.0, 4.0)  # seconds, drawn at random
MAX_KILLS = 15
DRAIN_LIMIT = 120.0  # seconds from the last order placed to every order fulfilled
WAREHOUSE_SECRET = "warehouse-chaos"
WEBHOOK_SECRET = "webhook-chaos"
LOCKED = "database is locked"
# One job at a time per worker, so that a kill interrupts at most one job: the bound on duplicates below
# is then the number of kills.
CONCURRENCY = 1
# How a crash shows in a job's error history: its worker was SIGKILLed, or lost the database.
CRASHES = ("WorkerLost", "OperationalError", "InterfaceError")
PIPELINE_STEPS = ("confirmation", "invoice", "inventory", "fulfilled")


def order_body(i: int) -> dict:
    return {
        "email": f"customer{i}@example.com",
        "name": f"Customer {i}",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "lines": [{"sku": f"CHAOS-{i % PRODUCTS}", "quantity": 1 + i % 3}],
        "payment_token": "tok_visa",
    }


def post_order(base_url: str, i: int) -> tuple[int, str]:
    request = urllib.request.Request(
        base_url + "/api/orders",
        data=json.dumps(order_body(i)).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": f"chaos-{i}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def confirmation_counts(mail_dir) -> collections.Counter:
    """Confirmation emails written by the workers' filemail backends, per order number (a message cut
    short by a SIGKILL counts if its subject made it to the file)."""
    counts = collections.Counter()
    for path in mail_dir.glob("*.log"):
        for chunk in path.read_bytes().split(b"-" * 79):
            if chunk.strip():
                subject = message_from_bytes(chunk.strip())["Subject"] or ""
                match = re.match(r"Your order (\S+) at ", subject)
                if match:
                    counts[match[1]] += 1
    return counts


def settled() -> bool:
    """Nothing running, blocked or due: what is left pending waits for a time still to come."""
    now = timezone.now()
    return not (
        Job.objects.filter(status__in=[JobStatus.RUNNING, JobStatus.BLOCKED]).exists()
        or Job.objects.filter(status=JobStatus.PENDING, run_at__lte=now).exists()
    )


def chaos_pause(seconds: float, done) -> bool:
    """Paces the chaos: sleeps ``seconds`` between two blows, waking early (True) once ``done()``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return bool(done())


def test_orders_under_worker_kills_are_each_processed_exactly_once(
    crew, http_server, live_server, settings, tmp_path
):
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    warehouse = http_server(secret=WAREHOUSE_SECRET)
    receiver = http_server(secret=WEBHOOK_SECRET)
    WebhookEndpoint.objects.create(url=receiver.url, secret=WEBHOOK_SECRET, events=["order.fulfilled"])
    for n in range(PRODUCTS):
        ProductFactory(sku=f"CHAOS-{n}", stock=INITIAL_STOCK)
    workers = crew(
        3,
        "--concurrency",
        str(CONCURRENCY),
        "--stale-after",
        "2",
        env={
            "EMAIL_URL": f"filemail://{mail_dir}",
            "WAREHOUSE_URL": warehouse.url + "stock",
            "WAREHOUSE_SECRET": WAREHOUSE_SECRET,
            "MEDIA_ROOT": settings.MEDIA_ROOT,
        },
    )

    responses: list[tuple[int, str]] = []

    def client(indices):
        for i in indices:
            responses.append(post_order(live_server.url, i))

    clients = [threading.Thread(target=client, args=(range(c, ORDERS, CLIENTS),)) for c in range(CLIENTS)]
    started = time.monotonic()
    for thread in clients:
        thread.start()

    def all_fulfilled() -> bool:
        return Order.objects.filter(status=Order.Status.FULFILLED).count() == ORDERS

    pace = random.Random(workers.random.random())
    while workers.kills < MAX_KILLS and not chaos_pause(pace.uniform(*PAUSE_BETWEEN_KILLS), all_fulfilled):
        workers.kill_random()
    for thread in clients:
        thread.join(120)
    placed_at = time.monotonic()
    wait_for(
        all_fulfilled,
        timeout=max(1.0, DRAIN_LIMIT - (time.monotonic() - placed_at)),
        interval=0.1,
        message=f"{ORDERS} orders fulfilled",
    )
    drained = time.monotonic() - placed_at
    wait_for(settled, timeout=60, interval=0.2, message="every job finished or waiting for its time")
    wait_for(lambda: len(receiver.accepted) >= ORDERS, timeout=30, message="fulfilment webhooks delivered")

    # Nothing of the chaos reached a customer: every order was accepted at the first request.
    assert len(responses) == ORDERS
    assert not [body for _, body in responses if LOCKED in body]
    assert collections.Counter(status for status, _ in responses) == {201: ORDERS}

    orders = list(Order.objects.all())
    assert len(orders) == ORDERS and {o.status for o in orders} == {Order.Status.FULFILLED}
    numbers = {o.number for o in orders}
    ids = [o.id for o in orders]

    # Effects inside the database: exactly once.
    assert sorted(Invoice.objects.values_list("order_id", flat=True)) == sorted(ids)
    assert sorted(InventorySync.objects.values_list("order_id", flat=True)) == sorted(ids)
    sold = dict(OrderLine.objects.values_list("sku").annotate(n=Sum("quantity")))
    for product in Product.objects.filter(sku__startswith="CHAOS-"):
        assert product.stock == INITIAL_STOCK - sold[product.sku], product.sku

    # Jobs: one per order and step, all succeeded; no follow-up before shipping; none lost.
    now = timezone.now()
    for order_id in ids:
        for step in PIPELINE_STEPS:
            jobs = list(Job.objects.filter(unique_key=job_key(order_id, step)))
            assert [j.status for j in jobs] == [JobStatus.SUCCEEDED], (order_id, step)
        assert not Job.objects.filter(unique_key=job_key(order_id, "followup")).exists()
    fulfilled_hooks = Job.objects.filter(type="deliver_webhook", payload__event="order.fulfilled")
    assert collections.Counter(fulfilled_hooks.values_list("payload__order_id", flat=True)) == {
        order_id: 1 for order_id in ids
    }
    assert set(fulfilled_hooks.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    leftovers = Job.objects.exclude(status=JobStatus.SUCCEEDED).exclude(
        status=JobStatus.PENDING, run_at__gt=now
    )
    assert not leftovers.exists(), list(leftovers.values("id", "type", "status", "run_at"))
    assert not DeadLetter.objects.exists()

    # No "database is locked" in any job's error history, nor anywhere in the workers' logs.
    errors = [e for errs in Job.objects.exclude(errors=[]).values_list("errors", flat=True) for e in errs]
    assert not [e for e in errors if LOCKED in json.dumps(e)]
    assert LOCKED not in workers.logs()

    # External effects: at least once. A repeat needs a crash between the send and its record: each
    # one is traced to a crash in its job's history, and a crash repeats at most what it interrupted.
    emails = confirmation_counts(mail_dir)
    pushes = collections.Counter(r.json["order"] for r in warehouse.accepted)
    hooks = collections.Counter(r.json["data"]["number"] for r in receiver.accepted)
    interruptible = workers.kills * CONCURRENCY
    by_number = {o.number: o.id for o in orders}
    for sent, step in ((emails, "confirmation"), (pushes, "inventory"), (hooks, None)):
        assert set(sent) == numbers
        assert sum(sent.values()) - ORDERS <= interruptible
        for number in (n for n, count in sent.items() if count > 1):
            if step:
                job = Job.objects.get(unique_key=job_key(by_number[number], step))
            else:
                job = fulfilled_hooks.get(payload__order_id=by_number[number])
            assert any(e["exception"].endswith(CRASHES) for e in job.errors), (number, job.errors)
    duplicates = sum(emails.values()) - ORDERS

    workers.stop()
    print(
        f"\n[{connection.vendor}] orders {ORDERS}, kills {workers.kills}"
        f", duplicate emails {duplicates}, duplicate warehouse pushes {sum(pushes.values()) - ORDERS},"
        f" duplicate webhooks {sum(hooks.values()) - ORDERS}, job errors {len(errors)},"
        f" placing {placed_at - started:.1f}s, time to drain {drained:.1f}s"
    )
    kinds = collections.Counter(e["exception"].rsplit(".", 1)[-1] for e in errors)
    outages = workers.logs().count("database unavailable")
    print(f"  job errors by kind: {dict(kinds)}; 'database unavailable' in worker logs: {outages}")
