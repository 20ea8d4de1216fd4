"""Payments that do not settle at once (the fake gateway speaks Stripe's shapes): 3-D Secure, processing,
expiry of unpaid orders, and capture on fulfilment."""

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import DeadLetter, Job
from jobs.testing import run_jobs
from orders.gateways import FakeGateway, fake_event, sign_fake_event
from orders.models import (
    FakeGatewayCharge,
    Order,
    OrderEventKind,
    OrderMessage,
    Payment,
    PaymentEvent,
    WebhookEndpoint,
)
from orders.payment_events import receive_event
from orders.services import InvalidShipment, create_shipment, expire_unpaid_order
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

BODY = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {
        "line1": "1 Analytical Street",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
    "lines": [{"sku": "A", "quantity": 2}],
}


@pytest.fixture(autouse=True)
def catalog():
    ProductFactory(sku="A", name="Enamel mug", price="12.90", stock=5)


def post(client, token: str, key: str = "key-1"):
    return client.post(
        "/api/orders",
        json.dumps({**BODY, "payment_token": token}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def stock() -> int:
    return Product.objects.get(sku="A").stock


def authenticate(client, action_url: str, outcome: str):
    """The customer on the fake bank's 3-D Secure page: GET it, press a button; returns the redirect."""
    path = re.sub(r"^https?://[^/]+", "", action_url)
    page = client.get(path)
    assert page.status_code == 200 and b"Authenticate" in page.content
    return client.post(path, {"outcome": outcome})


def test_three_d_secure_answers_202_with_the_url_and_holds_the_stock(client):
    response = post(client, "tok_threeDSecureRequired")
    assert response.status_code == 202
    body = response.json()
    order = Order.objects.get()
    assert body["status"] == "requires_action" and body["order"]["number"] == order.number
    assert body["action_url"].startswith("http") and "/fake-gateway/authenticate/" in body["action_url"]
    assert order.status == Order.Status.PENDING_PAYMENT and stock() == 3
    expiry = Job.objects.get(type="expire_unpaid_order")
    assert expiry.run_at > timezone.now() + timedelta(minutes=14)


def test_passing_three_d_secure_pays_the_order_once_whichever_of_return_and_webhook_comes_first(client):
    action_url = post(client, "tok_threeDSecureRequired").json()["action_url"]
    back = authenticate(client, action_url, "authenticate")
    order = Order.objects.get()
    assert back.status_code == 302 and back["Location"] == f"/orders/{order.token}/payment-return"
    page = client.get(back["Location"])  # the customer's return settles it first ...
    assert page.status_code == 302 and page["Location"] == order.get_absolute_url()
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    run_jobs()  # ... and the webhook, applied after, changes nothing
    event = PaymentEvent.objects.get(type="payment_intent.succeeded")
    assert event.outcome == PaymentEvent.Outcome.APPLIED
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and order.payments.get().status == Payment.Status.SUCCEEDED
    assert Job.objects.filter(type="send_order_confirmation").count() == 1
    expiry = Job.objects.get(type="expire_unpaid_order")
    assert expiry.status == "pending"  # its time has not come; when it does, it finds the order paid
    expire_unpaid_order(order, actor="system")
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and stock() == 3
    # A retry of the first request answers what it became.
    assert post(client, "tok_threeDSecureRequired").status_code == 201


def test_failing_three_d_secure_fails_the_order_and_returns_the_stock(client):
    action_url = post(client, "tok_threeDSecureRequired").json()["action_url"]
    back = authenticate(client, action_url, "fail")
    run_jobs()  # the webhook comes first this time
    order = Order.objects.get()
    assert order.status == Order.Status.PAYMENT_FAILED and stock() == 5
    assert "authenticated" in order.payments.get().decline_reason
    client.get(back["Location"])  # the customer's return after it changes nothing
    order.refresh_from_db()
    assert order.status == Order.Status.PAYMENT_FAILED and stock() == 5
    assert post(client, "tok_threeDSecureRequired").status_code == 402


def test_a_bad_outcome_on_the_fake_bank_page_is_a_form_error(client):
    action_url = post(client, "tok_threeDSecureRequired").json()["action_url"]
    response = authenticate(client, action_url, "maybe")
    assert response.status_code == 400 and Order.objects.get().status == Order.Status.PENDING_PAYMENT


def test_a_processing_payment_settles_by_the_delayed_webhook(client, settings):
    response = post(client, "tok_processing")
    assert response.status_code == 202 and response.json()["status"] == "processing"
    settle = Job.objects.get(type="fake_gateway_settle")
    assert settle.run_at >= timezone.now() + timedelta(seconds=settings.FAKE_GATEWAY_SETTLE_AFTER - 1)
    Job.objects.filter(pk=settle.pk).update(run_at=timezone.now())  # the bank answers now
    run_jobs()
    order = Order.objects.get()
    assert order.status == Order.Status.FULFILLED
    assert PaymentEvent.objects.get().type == "payment_intent.succeeded"
    assert FakeGatewayCharge.objects.get().status == "succeeded"


def test_an_unpaid_order_expires_its_payment_is_cancelled_and_its_stock_released_once(client):
    WebhookEndpoint.objects.create(url="http://hooks.example/", events=["order.expired"])
    post(client, "tok_threeDSecureRequired")
    order = Order.objects.get()
    assert expire_unpaid_order(order, actor="system").status == Order.Status.EXPIRED
    assert expire_unpaid_order(order, actor="system").status == Order.Status.EXPIRED
    assert stock() == 5 and FakeGatewayCharge.objects.get().status == "canceled"
    assert order.payments.get().status == Payment.Status.CANCELED
    assert OrderMessage.objects.get(order=order).event == "order.expired"


def test_a_payment_that_succeeded_before_the_expiry_wins(client):
    action_url = post(client, "tok_threeDSecureRequired").json()["action_url"]
    reference = FakeGatewayCharge.objects.get().reference
    FakeGatewayCharge.objects.filter(reference=reference).update(status="succeeded", succeeded=True)
    order = expire_unpaid_order(Order.objects.get(), actor="system")
    assert order.status == Order.Status.PAID and stock() == 3
    assert action_url and FakeGateway().retrieve(order.number).status == "succeeded"


def test_a_webhook_of_success_after_the_expiry_gives_the_money_back(client):
    post(client, "tok_threeDSecureRequired")
    order = expire_unpaid_order(Order.objects.get(), actor="system")
    assert order.status == Order.Status.EXPIRED and stock() == 5
    # Out of order: the bank's success arrives after the order expired (and its stock went back).
    FakeGatewayCharge.objects.update(status="succeeded", succeeded=True)
    charge = FakeGatewayCharge.objects.get()
    payload = json.dumps(fake_event("payment_intent.succeeded", charge)).encode()
    receive_event(payload, sign_fake_event(payload), gateway=FakeGateway())
    run_jobs()
    order.refresh_from_db()
    charge.refresh_from_db()
    assert order.status == Order.Status.EXPIRED and stock() == 5
    assert charge.refunded_amount == charge.amount  # the customer does not pay for an expired order


def test_capture_on_fulfilment_authorizes_at_checkout_and_captures_before_shipping(client, settings):
    settings.PAYMENT_CAPTURE = "on_fulfilment"
    assert post(client, "tok_visa").status_code == 201
    order = Order.objects.get()
    assert order.status == Order.Status.PAID and order.payments.get().status == Payment.Status.AUTHORIZED
    assert FakeGatewayCharge.objects.get().status == "authorized"
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED
    assert order.payments.get().status == Payment.Status.SUCCEEDED
    assert FakeGatewayCharge.objects.get().status == "succeeded"


def test_a_capture_the_gateway_refuses_is_a_dead_letter_and_the_order_does_not_ship(client, settings):
    settings.PAYMENT_CAPTURE = "on_fulfilment"
    post(client, "tok_visa")
    FakeGatewayCharge.objects.update(status="canceled")  # the authorization lapsed at the bank
    run_jobs()
    order = Order.objects.get()
    assert order.status == Order.Status.PAID and order.payments.get().status == Payment.Status.AUTHORIZED
    job = Job.objects.get(type="mark_order_fulfilled")
    dead = DeadLetter.objects.get(job=job)
    assert job.status == "dead" and job.attempts == 1  # a refusal is not retried
    assert "cannot be captured: it is canceled" in dead.error_message
    step = order.events.get(kind=OrderEventKind.STEP_FAILED)
    assert step.facts["step"] == "fulfilled" and step.facts["final"] is True  # "delayed" on the order page
    with pytest.raises(InvalidShipment):
        create_shipment(order, lines={"A": 2}, actor="staff:ada")
    assert not order.shipments.exists()


def test_checkout_form_sends_the_customer_to_three_d_secure_and_back_to_the_paid_order(client):
    client.post("/cart/add/A/", {"quantity": 1})
    page = client.get("/checkout/")
    token = re.search(rb'name="checkout_token" value="([^"]+)"', page.content)[1].decode()
    form = {
        "email": "ada@example.com",
        "name": "Ada",
        "line1": "1 Street",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
        "payment_token": "tok_threeDSecureRequired",
        "checkout_token": token,
    }
    response = client.post("/orders/", form)
    assert response.status_code == 302 and "/fake-gateway/authenticate/" in response["Location"]
    back = authenticate(client, response["Location"], "authenticate")
    page = client.get(back["Location"], follow=True)
    assert b"Paid" in page.content
    assert Order.objects.get().status == Order.Status.PAID


def test_a_cancelled_order_s_authorization_is_voided_and_never_captured(client, settings):
    from orders.services import cancel_order

    settings.PAYMENT_CAPTURE = "on_fulfilment"
    post(client, "tok_visa")
    order = cancel_order(Order.objects.get(), actor="staff:ada")
    assert order.status == Order.Status.CANCELLED and stock() == 5
    assert FakeGatewayCharge.objects.get().status == "canceled"
    assert order.payments.get().status == Payment.Status.CANCELED
    run_jobs()  # the pipeline's fulfilment step finds the order cancelled: nothing is captured
    assert FakeGatewayCharge.objects.get().status == "canceled"
    assert not FakeGatewayCharge.objects.get().refunds.exists()
