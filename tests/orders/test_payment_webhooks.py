"""POST /webhooks/stripe: the signature verified on the raw body, each event stored once and applied by
a job, in any order and however often it comes, and applied once even when its worker is SIGKILLed
in the middle."""

import json
import time

import pytest
from django.core import mail
from django.db import connection
from django.test import Client

from jobs.models import DeadLetter, Job
from jobs.testing import run_jobs
from orders.gateways import fake_event, sign_fake_event
from orders.models import FakeGatewayCharge, Order, OrderMessage, Payment, PaymentEvent, WebhookEndpoint
from orders.webhooks import sign
from shop.models import Product
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.utils import wait_for

pytestmark = pytest.mark.django_db

BODY = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {"line1": "1 Street", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    "lines": [{"sku": "A", "quantity": 2}],
}


@pytest.fixture(autouse=True)
def catalog():
    ProductFactory(sku="A", name="Enamel mug", price="12.90", stock=5)


def waiting_order(token: str = "tok_processing") -> tuple[Order, FakeGatewayCharge]:
    response = Client().post(
        "/api/orders", json.dumps({**BODY, "payment_token": token}), content_type="application/json"
    )
    assert response.status_code == 202
    Job.objects.filter(type="fake_gateway_settle").delete()  # this test's events stand for the bank
    return Order.objects.get(), FakeGatewayCharge.objects.get()


def event_for(charge: FakeGatewayCharge, event_type: str, status: str, **changes) -> dict:
    FakeGatewayCharge.objects.filter(pk=charge.pk).update(status=status, succeeded=status == "succeeded")
    charge.refresh_from_db()
    event = fake_event(event_type, charge)
    event.update(changes)
    return event


def deliver(event: dict, *, signature: str | None = None, raw: bytes | None = None):
    payload = raw if raw is not None else json.dumps(event).encode()
    return Client().post(
        "/webhooks/stripe",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_fake_event(payload) if signature is None else signature,
    )


def stock() -> int:
    return Product.objects.get(sku="A").stock


def test_a_signed_event_is_stored_once_answered_at_once_and_applied_by_a_job():
    order, charge = waiting_order()
    event = event_for(charge, "payment_intent.succeeded", "succeeded")
    response = deliver(event)
    assert response.status_code == 200 and response.json() == {"received": event["id"], "duplicate": False}
    stored = PaymentEvent.objects.get()
    assert stored.payload == event and stored.outcome == PaymentEvent.Outcome.PENDING
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT  # not applied in the request
    assert Job.objects.get(type="apply_payment_event").unique_key == f"payment-event:{event['id']}"
    run_jobs()
    order.refresh_from_db()
    stored.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and stored.outcome == PaymentEvent.Outcome.APPLIED


@pytest.mark.parametrize(
    "signature",
    ["", "t=1,v1=deadbeef", "v1=abc", "garbage"],
    ids=["missing", "wrong", "no-timestamp", "garbage"],
)
def test_a_bad_signature_is_400_and_stores_nothing(signature):
    order, charge = waiting_order()
    response = deliver(event_for(charge, "payment_intent.succeeded", "succeeded"), signature=signature)
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert not PaymentEvent.objects.exists() and not Job.objects.filter(type="apply_payment_event").exists()


def test_a_tampered_body_is_refused():
    order, charge = waiting_order()
    event = event_for(charge, "payment_intent.succeeded", "succeeded")
    signature = sign_fake_event(json.dumps(event).encode())
    event["data"]["object"]["amount"] = 1
    assert deliver(event, signature=signature).status_code == 400
    assert not PaymentEvent.objects.exists()


def test_a_replayed_event_with_an_old_timestamp_is_refused():
    from orders.gateways import fake_webhook_secret

    order, charge = waiting_order()
    payload = json.dumps(event_for(charge, "payment_intent.succeeded", "succeeded")).encode()
    old = sign(payload, fake_webhook_secret(), timestamp=int(time.time()) - 600)
    assert deliver({}, raw=payload, signature=old).status_code == 400
    assert not PaymentEvent.objects.exists()


def test_a_repeated_event_id_is_200_and_changes_nothing():
    order, charge = waiting_order()
    event = event_for(charge, "payment_intent.succeeded", "succeeded")
    deliver(event)
    run_jobs()
    again = deliver(event)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert PaymentEvent.objects.count() == 1 and Job.objects.filter(type="apply_payment_event").count() == 1
    assert Order.objects.get().payments.count() == 1


def test_failed_after_succeeded_leaves_the_order_paid():
    order, charge = waiting_order()
    deliver(event_for(charge, "payment_intent.succeeded", "succeeded"))
    failed = fake_event("payment_intent.payment_failed", charge)
    failed["data"]["object"]["status"] = "requires_payment_method"
    deliver(failed)
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and stock() == 3
    assert order.payments.get().status == Payment.Status.SUCCEEDED


def test_failed_then_canceled_fails_the_order_and_releases_the_stock_once():
    order, charge = waiting_order()
    deliver(event_for(charge, "payment_intent.payment_failed", "declined"))
    deliver(event_for(charge, "payment_intent.canceled", "canceled"))
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.PAYMENT_FAILED and stock() == 5
    assert [e.outcome for e in PaymentEvent.objects.all()] == ["applied", "applied"]


def test_an_unknown_event_type_is_stored_and_marked_ignored():
    order, charge = waiting_order()
    deliver({**fake_event("customer.created", charge)})
    run_jobs()
    assert PaymentEvent.objects.get().outcome == PaymentEvent.Outcome.IGNORED


def test_an_event_for_no_order_goes_to_the_dead_letters_with_the_raw_event_kept():
    order, charge = waiting_order()
    event = fake_event("payment_intent.succeeded", charge)
    event["data"]["object"]["metadata"] = {"order_number": "nope"}
    event["data"]["object"]["id"] = "pi_unknown"
    deliver(event)
    run_jobs()
    dead = DeadLetter.objects.get(type="apply_payment_event")
    assert "no order" in dead.error_message
    assert PaymentEvent.objects.get(event_id=event["id"]).payload == event  # what staff look at


def test_a_dispute_marks_the_order_tells_staff_and_sends_order_disputed_once(settings):
    settings.PAYMENT_ALERT_EMAILS = ["payments@shop.example"]
    WebhookEndpoint.objects.create(url="http://hooks.example/", events=["order.disputed"])
    order, charge = waiting_order()
    deliver(event_for(charge, "payment_intent.succeeded", "succeeded"))
    run_jobs()
    dispute = {
        "id": "evt_dispute_1",
        "object": "event",
        "type": "charge.dispute.created",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "dp_1",
                "object": "dispute",
                "payment_intent": charge.reference,
                "reason": "fraudulent",
            }
        },
    }
    mail.outbox.clear()
    deliver(dispute)
    deliver({**dispute, "id": "evt_dispute_2"})  # the provider repeats itself under another id
    run_jobs(max_jobs=4)
    order.refresh_from_db()
    assert order.disputed_at is not None
    alerts = [m for m in mail.outbox if "dispute" in m.subject]
    assert len(alerts) == 1 and alerts[0].to == ["payments@shop.example"]
    assert order.email not in alerts[0].body  # no customer data beyond the order number
    assert OrderMessage.objects.filter(order=order, event="order.disputed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_event_whose_worker_is_killed_mid_way_is_applied_once(tmp_path, settings):
    """The worker applying payment_intent.succeeded is held at the order's update (another transaction
    holds the row) and SIGKILLed there; the rescued job applies the event once."""
    if connection.vendor != "postgresql":
        pytest.skip("holding a worker between its claim and its first write needs row locks")
    import psycopg

    from tests.utils import database_url

    order, charge = waiting_order()
    deliver(event_for(charge, "payment_intent.succeeded", "succeeded"))
    procs = WorkerProcesses(tmp_path)
    holder = psycopg.connect(database_url(), autocommit=False)
    try:
        holder.execute("SELECT id FROM orders_order WHERE id = %s FOR UPDATE", [order.pk])
        worker = procs.start("--stale-after", "1", env={"MEDIA_ROOT": settings.MEDIA_ROOT})

        def waits_for_the_row() -> bool:
            with psycopg.connect(database_url(), autocommit=True) as probe:
                waiting = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    """ AND query LIKE 'UPDATE "orders_order"%%'"""
                ).fetchone()[0]
            return waiting == 1

        wait_for(waits_for_the_row, timeout=60, message="the worker waits to mark the order paid")
        worker.kill()
        worker.wait(10)
    finally:
        holder.rollback()
        holder.close()
    try:
        procs.start("--stale-after", "1", env={"MEDIA_ROOT": settings.MEDIA_ROOT})
        wait_for(
            lambda: Job.objects.get(type="apply_payment_event").status == "succeeded",
            timeout=60,
            message="the event applied by the rescue",
        )
    finally:
        procs.stop_all()
    order.refresh_from_db()
    assert order.status in (Order.Status.PAID, Order.Status.FULFILLED)
    assert order.payments.get().status == Payment.Status.SUCCEEDED
    assert PaymentEvent.objects.get().outcome == PaymentEvent.Outcome.APPLIED
    assert Job.objects.filter(type="send_order_confirmation").count() == 1
    job = Job.objects.get(type="apply_payment_event")
    assert any(e["exception"].endswith("WorkerLost") for e in job.errors)
