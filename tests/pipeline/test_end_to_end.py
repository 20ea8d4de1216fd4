"""Orders placed through the API, processed by a real `runworker` process, talking to a real (local)
warehouse and webhook receiver."""

import collections
import json
import signal
from email import message_from_bytes

import pytest
from django.test import Client

from jobs.models import DeadLetter
from orders.models import InventorySync, Invoice, Order, WebhookEndpoint
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = 6
WAREHOUSE_SECRET = "warehouse-e2e"
WEBHOOK_SECRET = "webhook-e2e"


@pytest.fixture
def workers(tmp_path):
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


def order_body(i: int, sku: str) -> dict:
    return {
        "email": f"customer{i}@example.com",
        "name": f"Customer {i}",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "lines": [{"sku": sku, "quantity": 1 + i % 3}],
        "payment_token": "tok_visa",
    }


def sent_mails(mail_dir) -> list:
    """Every message the worker's filemail backend wrote (one file per connection, messages separated
    by a line of dashes)."""
    messages = []
    for path in sorted(mail_dir.glob("*.log")):
        for chunk in path.read_bytes().split(b"-" * 79):
            if chunk.strip():
                messages.append(message_from_bytes(chunk.strip()))
    return messages


def test_every_order_is_fulfilled_with_one_email_one_invoice_and_one_sync(
    workers, http_server, tmp_path, settings
):
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    warehouse = http_server(script=[503, 500, 503], secret=WAREHOUSE_SECRET)  # fails on purpose at first
    receiver = http_server(script=[502], secret=WEBHOOK_SECRET)
    WebhookEndpoint.objects.create(
        url=receiver.url, secret=WEBHOOK_SECRET, events=["order.paid", "order.fulfilled"]
    )
    products = [ProductFactory(sku=f"E2E-{n}", stock=100) for n in range(3)]

    worker = workers.start(
        "--concurrency",
        "4",
        env={
            "EMAIL_URL": f"filemail://{mail_dir}",
            "WAREHOUSE_URL": warehouse.url + "stock",
            "WAREHOUSE_SECRET": WAREHOUSE_SECRET,
            "MEDIA_ROOT": settings.MEDIA_ROOT,
        },
    )
    client = Client()
    numbers = []
    for i in range(ORDERS):
        response = client.post(
            "/api/orders",
            json.dumps(order_body(i, products[i % 3].sku)),
            content_type="application/json",
            headers={"Idempotency-Key": f"e2e-{i}"},
        )
        assert response.status_code == 201, response.content
        numbers.append(response.json()["number"])

    wait_for(
        lambda: Order.objects.filter(status="fulfilled").count() == ORDERS,
        timeout=90,
        message=f"{ORDERS} orders fulfilled; worker log:\n{workers.output(worker)[-3000:]}",
    )
    wait_for(lambda: len(receiver.accepted) == 2 * ORDERS, timeout=30, message="all webhooks delivered")

    confirmations = [m for m in sent_mails(mail_dir) if m["Subject"].startswith("Your order")]
    assert sorted(m["To"] for m in confirmations) == sorted(f"customer{i}@example.com" for i in range(ORDERS))
    assert Invoice.objects.count() == ORDERS
    for invoice in Invoice.objects.all():
        with invoice.file.open("rb") as f:
            assert f.read(5) == b"%PDF-"
    assert InventorySync.objects.count() == ORDERS
    assert sorted(r.json["order"] for r in warehouse.accepted) == sorted(numbers)
    assert len(warehouse.received) == ORDERS + 3  # three refused, each retried
    events = collections.Counter((r.json["type"], r.json["data"]["number"]) for r in receiver.accepted)
    assert events == {(event, n): 1 for event in ("order.paid", "order.fulfilled") for n in numbers}
    assert not DeadLetter.objects.exists()

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, workers.output(worker)
