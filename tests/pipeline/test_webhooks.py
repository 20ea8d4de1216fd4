"""Signed order webhooks, delivered as jobs, and the receiver's verify_signature."""

import hashlib
import hmac
import json
import time

import pytest

from jobs.api import enqueue
from jobs.models import DeadLetter, Job, JobStatus
from jobs.testing import run_jobs
from orders.models import OrderMessage, WebhookDelivery, WebhookEndpoint
from orders.services import mark_fulfilled
from orders.webhooks import sign, verify_signature
from tests.utils import wait_for

SECRET = "whsec_test"
BODY = b'{"type":"order.paid","data":{"number":"X"}}'


# -- verify_signature, as a receiver uses it ---------------------------------------------------------


def test_a_fresh_signature_of_the_body_verifies():
    assert verify_signature(sign(BODY, SECRET), BODY, SECRET)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    t = int(time.time())
    expected = hmac.new(SECRET.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, timestamp=t) == f"t={t},v1={expected}"


def test_a_tampered_body_is_rejected():
    header = sign(BODY, SECRET)
    assert not verify_signature(header, BODY.replace(b"X", b"Y"), SECRET)


def test_a_wrong_secret_is_rejected():
    assert not verify_signature(sign(BODY, "another-secret"), BODY, SECRET)


def test_a_stale_timestamp_is_rejected_even_with_a_valid_mac():
    old = int(time.time()) - 301
    assert not verify_signature(sign(BODY, SECRET, timestamp=old), BODY, SECRET)
    assert verify_signature(sign(BODY, SECRET, timestamp=old), BODY, SECRET, tolerance=600)


def test_a_timestamp_from_the_future_is_rejected():
    assert not verify_signature(sign(BODY, SECRET, timestamp=int(time.time()) + 301), BODY, SECRET)


def test_a_forged_timestamp_breaks_the_mac():
    header = sign(BODY, SECRET, timestamp=int(time.time()) - 3600)
    forged = f"t={int(time.time())}," + header.split(",", 1)[1]
    assert not verify_signature(forged, BODY, SECRET)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1", ",,,"])
def test_a_malformed_header_is_rejected_without_an_exception(header):
    assert not verify_signature(header, BODY, SECRET)


# -- delivery --------------------------------------------------------------------------------------


@pytest.fixture
def endpoint(http_server):
    def create(script=(), default=200, events=("order.paid", "order.fulfilled"), **fields):
        server = http_server(script, default=default, secret=SECRET)
        row = WebhookEndpoint.objects.create(
            url=server.url + "hook", secret=SECRET, events=list(events), **fields
        )
        return row, server

    return create


def delivery_job(endpoint, event, order) -> Job:
    return Job.objects.get(unique_key=f"webhook:{endpoint.id}:{event}:order:{order.id}")


@pytest.mark.django_db
def test_order_paid_is_delivered_signed_with_the_order(place, endpoint):
    row, server = endpoint(events=["order.paid"])
    order = place()
    run_jobs()
    (request,) = server.accepted
    assert verify_signature(request.headers["X-Shop-Signature"], request.body, SECRET)
    assert request.headers["X-Shop-Event"] == "order.paid"
    body = json.loads(request.body)
    assert body["id"] == f"order.paid:{order.number}" and body["type"] == "order.paid"
    assert body["data"]["number"] == order.number and body["data"]["total"] == "23.80"
    assert "pipeline" not in body["data"]
    assert WebhookDelivery.objects.get().response_status == 200


@pytest.mark.django_db
def test_order_fulfilled_is_delivered_when_the_order_is_fulfilled(place, endpoint):
    row, server = endpoint(events=["order.fulfilled"])
    order = place()
    assert not Job.objects.filter(type="deliver_webhook").exists()
    run_jobs()
    (request,) = server.accepted
    assert request.headers["X-Shop-Event"] == "order.fulfilled"
    assert request.json["data"]["status"] == "fulfilled"
    assert delivery_job(row, "order.fulfilled", order).status == JobStatus.SUCCEEDED


@pytest.mark.django_db
def test_fulfilling_twice_enqueues_one_fulfilled_webhook(place, endpoint):
    row, server = endpoint(events=["order.fulfilled"])
    order = place()
    assert mark_fulfilled(order, actor="system") and not mark_fulfilled(order, actor="system")
    assert Job.objects.filter(type="deliver_webhook").count() == 1


@pytest.mark.django_db
def test_failed_deliveries_are_retried_with_backoff(place, endpoint):
    row, server = endpoint(script=[500, 503], events=["order.paid"])
    order = place()
    wait_for(lambda: run_jobs() >= 0 and server.accepted, message="delivered after two 5xx")
    job = delivery_job(row, "order.paid", order)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 3
    first, second = (e["at"] for e in job.errors)
    assert first < second < job.finished_at.isoformat()


@pytest.mark.django_db
def test_a_receiver_refusing_with_4xx_sends_the_delivery_to_the_dead_letters(place, endpoint):
    row, server = endpoint(default=410, events=["order.paid"])
    order = place()
    run_jobs()
    assert delivery_job(row, "order.paid", order).status == JobStatus.DEAD
    assert DeadLetter.objects.get(type="deliver_webhook").error_class == "jobs.exceptions.PermanentError"


@pytest.mark.django_db
def test_delivery_job_run_twice_delivers_once(place, endpoint):
    row, server = endpoint(events=["order.paid"])
    order = place()
    run_jobs()
    enqueue("deliver_webhook", {"endpoint_id": row.id, "event": "order.paid", "order_id": order.id})
    run_jobs()
    assert len(server.received) == 1 and WebhookDelivery.objects.count() == 1


@pytest.mark.django_db
def test_an_endpoint_deactivated_before_delivery_gets_nothing(place, endpoint):
    row, server = endpoint(events=["order.paid"])
    order = place()
    WebhookEndpoint.objects.filter(pk=row.pk).update(active=False)
    run_jobs()
    assert delivery_job(row, "order.paid", order).status == JobStatus.SUCCEEDED
    assert not server.received


@pytest.mark.django_db
def test_staff_manage_endpoints_in_admin(admin_client):
    response = admin_client.post(
        "/admin/orders/webhookendpoint/add/",
        {
            "url": "https://hooks.example.com/shop",
            "description": "ERP",
            "events": ["order.paid", "order.fulfilled"],
            "active": "on",
            "secret": "s3cret",
            "deliveries-TOTAL_FORMS": "0",
            "deliveries-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = WebhookEndpoint.objects.get()
    assert row.events == ["order.paid", "order.fulfilled"] and row.secret == "s3cret"


@pytest.mark.django_db
def test_a_retried_event_sends_the_body_recorded_when_it_happened(place, endpoint):
    """order.paid retried after the order was fulfilled still says paid, with the time it was paid."""
    row, server = endpoint(script=[500], events=["order.paid"])
    order = place()
    message = OrderMessage.objects.get(order=order, event="order.paid")
    run_jobs(max_jobs=1)  # the confirmation (high priority) first
    wait_for(lambda: run_jobs() >= 0 and server.accepted, message="delivered after a 5xx")
    order.refresh_from_db()
    assert order.status == "fulfilled"
    body = server.accepted[0].json
    assert body["data"]["status"] == "paid" and body == message.body
    assert body["created"] == int(message.created_at.timestamp())
    assert [json.loads(r.body)["created"] for r in server.received] == [body["created"]] * 2


@pytest.mark.django_db
def test_two_partial_refunds_are_two_events_each_delivered_once(place, endpoint):
    from decimal import Decimal

    from orders.services import request_refund

    row, server = endpoint(events=["order.refunded"])
    order = place()
    run_jobs()
    request_refund(order, actor="staff:ada", reason="one", amount=Decimal("1.00"))
    run_jobs()
    request_refund(order, actor="staff:ada", reason="two", amount=Decimal("2.00"))
    run_jobs()
    bodies = [r.json for r in server.accepted]
    assert [b["refund"]["amount"] for b in bodies] == ["1.00", "2.00"]
    assert len({b["id"] for b in bodies}) == 2 and WebhookDelivery.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_deliveries_are_rate_limited_and_shared_per_endpoint(place, endpoint):
    """One endpoint flooded with events does not hold up another's: their deliveries are claimed
    round-robin, each endpoint under its own rate limit (WEBHOOK_RATE_LIMIT)."""
    from jobs import engine

    flooded, _ = endpoint(events=["order.paid"])
    orders = [place() for _ in range(4)]
    other, _ = endpoint(events=["order.paid"])
    late = place()
    deliveries = Job.objects.filter(type="deliver_webhook")
    assert sorted(deliveries.values_list("fair_key", flat=True)) == sorted(
        [str(flooded.id)] * 5 + [str(other.id)]
    )
    claimed = engine.claim("w", 2, types=["deliver_webhook"])
    assert {job.fair_key for job in claimed} == {str(flooded.id), str(other.id)}
    assert delivery_job(other, "order.paid", late).status == JobStatus.RUNNING
    assert len(orders) == 4
