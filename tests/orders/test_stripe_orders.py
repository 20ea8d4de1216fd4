"""The whole order path on the Stripe gateway (the official SDK against the local Stripe-compatible
server): checkout, 3-D Secure, signed webhooks verified by the SDK at /webhooks/stripe (bad signature,
replay, duplicates, out of order, a worker killed mid-event), a lost answer, expiry, capture on
fulfilment, and a refund."""

import json
import re
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import DeadLetter, Job
from jobs.testing import run_jobs
from orders.gateways import StripeGateway
from orders.models import CreditNote, Order, Payment, PaymentEvent, Refund
from orders.services import expire_unpaid_order, request_refund, retry_refund
from shop.models import Product
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.stripe_server import LOST, TIMEOUT
from tests.utils import wait_for

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


def webhook(stripe, event_type: str | dict, obj=None, **signing):
    signed = stripe.webhook(event_type, obj, **signing)
    return Client().post(
        "/webhooks/stripe", signed.body, content_type="application/json", headers=signed.headers
    )


def stock() -> int:
    return Product.objects.get(sku="A").stock


def paid_by_three_d_secure(stripe) -> tuple[Order, str]:
    """An order whose customer passed 3-D Secure at Stripe; no webhook has come yet."""
    assert post("pm_card_threeDSecure2Required").status_code == 202
    order = Order.objects.get()
    reference = order.payments.get().gateway_reference
    stripe.complete_3ds(reference, succeed=True)
    return order, reference


def succeeded_at_the_bank_after_expiry(stripe) -> tuple[Order, str]:
    """An order expired (its PaymentIntent cancelled at Stripe, its stock back) whose payment the bank
    nevertheless reports succeeded: the late success the webhook brings."""
    assert post("pm_card_threeDSecure2Required").status_code == 202
    order = expire_unpaid_order(Order.objects.get(), actor="system")
    assert order.status == Order.Status.EXPIRED and stock() == 5
    reference = order.payments.get().gateway_reference
    with stripe.lock:
        stripe.payment_intents[reference]["status"] = "requires_action"
        stripe.complete_3ds(reference, succeed=True)
    return order, reference


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


@pytest.mark.parametrize("forgery", ["other_secret", "tampered_body", "missing"])
def test_a_webhook_the_sdk_does_not_verify_is_400_and_stores_nothing(stripe, forgery):
    order, reference = paid_by_three_d_secure(stripe)
    signed = stripe.webhook("payment_intent.succeeded", reference, secret="whsec_not_ours")
    body, headers = signed.body, signed.headers
    if forgery != "other_secret":
        signed = stripe.webhook("payment_intent.succeeded", reference)
        body, headers = signed.body, signed.headers
        if forgery == "tampered_body":
            body = body.replace(b'"amount": 2580', b'"amount": 1')
        else:
            headers = {}
    response = Client().post("/webhooks/stripe", body, content_type="application/json", headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert not PaymentEvent.objects.exists() and not Job.objects.filter(type="apply_payment_event").exists()
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


def test_a_captured_webhook_replayed_later_is_refused(stripe):
    order, reference = paid_by_three_d_secure(stripe)
    old = int(time.time()) - 301  # past the SDK's five-minute tolerance
    response = webhook(stripe, "payment_intent.succeeded", reference, timestamp=old)
    assert response.status_code == 400 and "timestamp" in response.json()["message"].lower()
    assert not PaymentEvent.objects.exists()


def test_a_repeated_event_id_is_acknowledged_stored_once_and_applied_once(stripe):
    order, reference = paid_by_three_d_secure(stripe)
    event = stripe.event("payment_intent.succeeded", reference)
    first, again = webhook(stripe, event), webhook(stripe, event)
    assert first.status_code == again.status_code == 200
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    run_jobs()
    assert webhook(stripe, event).json()["duplicate"] is True  # also once it was applied
    run_jobs()
    assert PaymentEvent.objects.get().outcome == PaymentEvent.Outcome.APPLIED
    assert Job.objects.filter(type="apply_payment_event").count() == 1
    assert Job.objects.filter(type="send_order_confirmation").count() == 1
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and order.payments.get().status == Payment.Status.SUCCEEDED


def test_payment_failed_arriving_after_succeeded_leaves_the_order_paid(stripe):
    order, reference = paid_by_three_d_secure(stripe)
    succeeded = stripe.event("payment_intent.succeeded", reference)
    failed_intent = {
        **stripe.payment_intent(reference),
        "status": "requires_payment_method",
        "last_payment_error": {"type": "card_error", "code": "card_declined", "message": "Declined."},
    }
    failed = stripe.event("payment_intent.payment_failed", failed_intent)
    failed["created"] = succeeded["created"] - 5  # it happened first, and comes last
    webhook(stripe, succeeded)
    run_jobs()
    webhook(stripe, failed)
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and stock() == 3
    assert order.payments.get().status == Payment.Status.SUCCEEDED
    assert [e.outcome for e in PaymentEvent.objects.order_by("id")] == ["applied", "applied"]


def test_succeeded_arriving_after_the_expiry_is_refunded_at_stripe_once(stripe):
    order, reference = succeeded_at_the_bank_after_expiry(stripe)
    event = stripe.event("payment_intent.succeeded", reference)
    webhook(stripe, event)
    webhook(stripe, {**event, "id": "evt_sent_again_under_a_new_id"})
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.EXPIRED and stock() == 5
    assert stripe.count("refund") == 1
    assert stripe.charge(reference)["amount_refunded"] == 2580  # the customer pays nothing
    assert not Job.objects.filter(type="send_order_confirmation").exists()


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_event_applies_it_once(stripe, tmp_path, settings):
    """The worker applying a late payment_intent.succeeded is SIGKILLed after Stripe made the refund but
    before its answer arrived; the rescued job replays the refund's key: one refund, the event applied."""
    order, reference = succeeded_at_the_bank_after_expiry(stripe)
    stripe.script("refund", LOST)  # Stripe refunds, the answer never reaches the worker
    webhook(stripe, "payment_intent.succeeded", reference)
    env = {
        **stripe.environ,
        "PAYMENT_GATEWAY": settings.PAYMENT_GATEWAY,
        "HTTP_TIMEOUT": "60",
        "MEDIA_ROOT": settings.MEDIA_ROOT,
    }
    procs = WorkerProcesses(tmp_path)
    try:
        worker = procs.start("--stale-after", "1", env=env)
        wait_for(
            lambda: stripe.count("refund") == 1, timeout=60, message="the worker's refund made at Stripe"
        )
        worker.kill()
        worker.wait(10)
        assert PaymentEvent.objects.get().outcome == PaymentEvent.Outcome.PENDING
        procs.start("--stale-after", "1", env=env)
        wait_for(
            lambda: Job.objects.get(type="apply_payment_event").status == "succeeded",
            timeout=60,
            message="the event applied by the rescue",
        )
    finally:
        procs.stop_all()
    job = Job.objects.get(type="apply_payment_event")
    assert any(e["exception"].endswith("WorkerLost") for e in job.errors)
    assert PaymentEvent.objects.get().outcome == PaymentEvent.Outcome.APPLIED
    assert stripe.count("refund") == 1 and stripe.charge(reference)["amount_refunded"] == 2580
    order.refresh_from_db()
    assert order.status == Order.Status.EXPIRED and stock() == 5


def test_a_capture_stripe_refuses_is_a_dead_letter_and_the_order_does_not_ship(stripe, settings):
    settings.PAYMENT_CAPTURE = "on_fulfilment"
    assert post("pm_card_visa").status_code == 201
    order = Order.objects.get()
    reference = order.payments.get().gateway_reference
    assert stripe.payment_intent(reference)["status"] == "requires_capture"
    StripeGateway().cancel(reference, "voided-at-the-bank")  # the authorization is gone
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and order.payments.get().status == Payment.Status.AUTHORIZED
    dead = DeadLetter.objects.get(type="mark_order_fulfilled")
    assert dead.attempts == 1 and "cannot be captured: it is canceled" in dead.error_message
    assert stripe.count("capture") == 0


def test_a_capture_stripe_did_not_answer_is_retried_and_the_order_ships_once_captured(stripe, settings):
    settings.PAYMENT_CAPTURE = "on_fulfilment"
    post("pm_card_visa")
    order = Order.objects.get()
    stripe.script("capture", 500)
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and not DeadLetter.objects.exists()

    def fulfilled() -> bool:
        run_jobs()  # the retry is due after a short backoff
        order.refresh_from_db()
        return order.status == Order.Status.FULFILLED

    wait_for(fulfilled, message="the capture retried")
    assert stripe.count("capture") == 1 and order.payments.get().status == Payment.Status.SUCCEEDED
    assert stripe.payment_intent(order.payments.get().gateway_reference)["amount_received"] == 2580


def test_the_return_page_asks_stripe_and_says_processing_until_the_bank_answers(stripe):
    stripe.outcome("pm_card_visa", "processing")
    response = post("pm_card_visa")
    assert response.status_code == 202 and response.json()["status"] == "processing"
    order = Order.objects.get()
    page = Client().get(f"/orders/{order.token}/payment-return", follow=True)
    assert b"Your payment is being processed. This page updates by itself." in page.content
    assert b'id="payment-waiting"' in page.content  # the page polls until the order settles
    stripe.settle(order.payments.get().gateway_reference)  # no webhook: the return page asks Stripe
    page = Client().get(f"/orders/{order.token}/payment-return", follow=True)
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and not PaymentEvent.objects.exists()
    assert b'<strong id="order-status">Paid</strong>' in page.content
    assert b'id="payment-waiting"' not in page.content


def test_an_event_that_keeps_failing_is_a_dead_letter_staff_see_raw_and_requeue(stripe, admin_client):
    order, reference = succeeded_at_the_bank_after_expiry(stripe)
    stripe.script("refund", *[500] * 8)  # Stripe fails every attempt at giving the money back
    event = stripe.event("payment_intent.succeeded", reference)
    webhook(stripe, event)
    for _ in range(8):  # its eight attempts, each retry made due at once
        run_jobs()
        Job.objects.filter(status="pending").update(run_at=timezone.now())
    dead = DeadLetter.objects.get(type="apply_payment_event")
    assert dead.attempts == 8 and dead.payload == {"event_id": event["id"]}
    stored = PaymentEvent.objects.get()
    assert stored.outcome == PaymentEvent.Outcome.PENDING and stored.payload == event
    page = admin_client.get(f"/admin/orders/paymentevent/{stored.pk}/change/")
    assert page.status_code == 200 and event["id"].encode() in page.content
    assert reference.encode() in page.content  # the raw event, for staff to read
    assert stripe.count("refund") == 0
    admin_client.post(
        "/admin/jobs/deadletter/", {"action": "requeue_selected", "_selected_action": [dead.pk]}
    )
    run_jobs()
    stored.refresh_from_db()
    assert stored.outcome == PaymentEvent.Outcome.APPLIED
    assert stripe.count("refund") == 1 and stripe.charge(reference)["amount_refunded"] == 2580
    order.refresh_from_db()
    assert order.status == Order.Status.EXPIRED and stock() == 5


def pending_refund_at_stripe(stripe) -> tuple[Order, Refund]:
    post("pm_card_visa")
    order = Order.objects.get()
    run_jobs()
    stripe.refund_status = "pending"  # Stripe answers later, by webhook
    refund = request_refund(order, actor="staff:ada", reason="Chipped", lines={"A": 1})
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.PENDING and refund.gateway_reference.startswith("re_")
    assert not CreditNote.objects.exists()
    return order, refund


def test_a_pending_refund_succeeds_by_refund_updated_and_charge_refunded_once(stripe):
    order, refund = pending_refund_at_stripe(stripe)
    stripe.settle_refund(refund.gateway_reference, succeed=True)
    webhook(stripe, "refund.updated", refund.gateway_reference)
    webhook(stripe, "charge.refunded", order.payments.get().gateway_reference)  # says the same again
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert CreditNote.objects.get().refund == refund  # one credit note for two events
    assert order.payments.get().status == Payment.Status.PARTIALLY_REFUNDED
    assert [e.outcome for e in PaymentEvent.objects.order_by("id")] == ["applied", "applied"]
    assert stripe.count("refund") == 1


@pytest.mark.parametrize("succeed", [True, False], ids=["succeeded", "failed"])
def test_charge_refunded_without_its_refunds_list_asks_stripe_for_each_pending_refund(stripe, succeed):
    """Stripe's charge no longer lists its refunds (API versions since 2022-11-15; the published schema
    has no such field): the event settles our pending refunds by retrieving them."""
    order, refund = pending_refund_at_stripe(stripe)
    stripe.settle_refund(refund.gateway_reference, succeed=succeed)
    event = stripe.event("charge.refunded", order.payments.get().gateway_reference)
    event["data"]["object"].pop("refunds", None)
    assert "refunds" not in event["data"]["object"]
    assert webhook(stripe, event).status_code == 200
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == (Refund.Status.SUCCEEDED if succeed else Refund.Status.FAILED)
    assert CreditNote.objects.filter(refund=refund).exists() == succeed
    assert PaymentEvent.objects.get().outcome == "applied"
    assert stripe.count("refund") == 1  # settled by asking, never by refunding again


def test_a_pending_refund_that_fails_later_is_failed_by_refund_failed_and_staff_retry_it(stripe):
    order, refund = pending_refund_at_stripe(stripe)
    stripe.settle_refund(refund.gateway_reference, succeed=False)
    webhook(stripe, "refund.failed", refund.gateway_reference)
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED and refund.failure_reason == "expired_or_canceled_card"
    assert not CreditNote.objects.exists() and order.payments.get().status == Payment.Status.SUCCEEDED
    stripe.refund_status = "succeeded"
    again = retry_refund(refund, actor="staff:ada")
    run_jobs()
    again.refresh_from_db()
    assert again.status == Refund.Status.SUCCEEDED and CreditNote.objects.get().refund == again
    assert stripe.charge(order.payments.get().gateway_reference)["amount_refunded"] == 1290
    assert order.payments.get().status == Payment.Status.PARTIALLY_REFUNDED


def test_the_checkout_form_sends_the_customer_to_stripes_3d_secure_and_back_to_the_paid_order(stripe):
    client = Client()
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
        "payment_token": "pm_card_threeDSecure2Required",
        "checkout_token": token,
    }
    response = client.post("/orders/", form)
    assert response.status_code == 302 and response["Location"].startswith(f"{stripe.url}/3ds/pi_")

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the customer's browser would follow; the test reads where to

    try:
        urllib.request.build_opener(Stay).open(response["Location"])  # the bank's page: passed
        raise AssertionError("the 3-D Secure page did not send the customer back")
    except urllib.error.HTTPError as back:
        assert back.code == 302
        location = urlsplit(back.headers["Location"])
    order = Order.objects.get()
    assert location.path == f"/orders/{order.token}/payment-return" and "payment_intent=pi_" in location.query
    page = client.get(f"{location.path}?{location.query}", follow=True)
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and b'<strong id="order-status">Paid</strong>' in page.content
    assert stripe.count("confirm") == 1 and order.payments.get().status == Payment.Status.SUCCEEDED
