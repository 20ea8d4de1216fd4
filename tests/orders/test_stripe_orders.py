"""The whole order path on the Stripe gateway (the official SDK against the local Stripe-compatible
server): checkout, 3-D Secure, the signed webhook, a lost answer, expiry, and a refund."""

import json

import pytest
from django.test import Client

from jobs.testing import run_jobs
from orders.models import Order, Payment, PaymentEvent, Refund
from orders.services import expire_unpaid_order, request_refund
from shop.models import Product
from tests.factories import ProductFactory
from tests.stripe_server import LOST, TIMEOUT

pytestmark = pytest.mark.django_db

BODY = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {"line1": "1 Street", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    "lines": [{"sku": "A", "quantity": 2}],
}


@pytest.fixture(autouse=True)
def stripe(stripe_server, settings):
    settings.PAYMENT_GATEWAY = "orders.gateways.StripeGateway"
    ProductFactory(sku="A", name="Enamel mug", price="12.90", stock=5)
    return stripe_server


def post(token: str, key: str = "key-1"):
    return Client().post(
        "/api/orders",
        json.dumps({**BODY, "payment_token": token}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def webhook(stripe, event_type: str, obj):
    signed = stripe.webhook(event_type, obj)
    return Client().post(
        "/webhooks/stripe", signed.body, content_type="application/json", headers=signed.headers
    )


def test_a_card_payment_is_one_confirmed_payment_intent_for_the_order(stripe):
    response = post("pm_card_visa")
    assert response.status_code == 201
    order = Order.objects.get()
    payment = order.payments.get()
    intent = stripe.payment_intent(payment.gateway_reference)
    assert intent["amount"] == 2580 and intent["currency"] == "eur" and intent["status"] == "succeeded"
    assert intent["metadata"] == {"order_number": order.number}
    assert stripe.count("confirm") == 1


def test_a_declined_card_is_402_with_stripes_reason_and_code(stripe):
    response = post("pm_card_chargeDeclined")
    assert response.status_code == 402 and response.json()["order"]["status"] == "payment_failed"
    payment = Order.objects.get().payments.get()
    assert payment.decline_code == "generic_decline" and payment.decline_reason
    assert Product.objects.get(sku="A").stock == 5


def test_three_d_secure_then_the_webhook_pays_the_order_once(stripe):
    response = post("pm_card_threeDSecure2Required")
    assert response.status_code == 202 and response.json()["status"] == "requires_action"
    assert response.json()["action_url"].startswith(stripe.url)
    order = Order.objects.get()
    reference = order.payments.get().gateway_reference
    stripe.complete_3ds(reference, succeed=True)
    assert webhook(stripe, "payment_intent.succeeded", reference).status_code == 200
    assert webhook(stripe, "payment_intent.succeeded", reference).status_code == 200  # a new id, same facts
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and order.payments.get().status == Payment.Status.SUCCEEDED
    assert PaymentEvent.objects.filter(outcome="applied").count() == 2
    # The customer's return after the webhook changes nothing.
    assert Client().get(f"/orders/{order.token}/payment-return").status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and stripe.count("confirm") == 1


def test_a_confirm_whose_answer_is_lost_is_settled_at_once_and_charged_once(stripe):
    stripe.script("confirm", LOST)  # Stripe confirmed; its answer never arrived
    first = post("pm_card_visa")
    assert first.status_code == 201, first.content
    assert Order.objects.get().status == Order.Status.PAID
    again = post("pm_card_visa")
    assert again.status_code == 201 and again.json() == first.json()
    assert stripe.count("confirm") == 1


def test_a_confirm_that_never_reached_stripe_fails_the_order_truthfully_and_charges_nothing(stripe):
    stripe.script("confirm", TIMEOUT)  # held unanswered and never processed
    first = post("pm_card_visa")
    assert first.status_code == 502 and first.json()["order"]["status"] == "payment_failed"
    (intent,) = stripe.payment_intents.values()
    assert intent["status"] == "canceled"  # it can never be confirmed later behind the customer's back
    assert Product.objects.get(sku="A").stock == 5 and stripe.count("confirm") == 0
    again = post("pm_card_visa")
    assert again.status_code == 402 and Order.objects.count() == 1


def test_an_expired_three_d_secure_payment_is_cancelled_at_stripe_and_releases_the_stock(stripe):
    post("pm_card_threeDSecure2Required")
    order = expire_unpaid_order(Order.objects.get(), actor="system")
    assert order.status == Order.Status.EXPIRED and Product.objects.get(sku="A").stock == 5
    assert stripe.payment_intent(order.payments.get().gateway_reference)["status"] == "canceled"


def test_a_partial_refund_goes_through_stripe_once(stripe):
    post("pm_card_visa")
    order = Order.objects.get()
    run_jobs()
    refund = request_refund(order, actor="staff:ada", reason="Chipped", lines={"A": 1})
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED and refund.gateway_reference.startswith("re_")
    assert stripe.refund(refund.gateway_reference)["amount"] == 1290
    assert order.payments.get().status == Payment.Status.PARTIALLY_REFUNDED
