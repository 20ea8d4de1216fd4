"""The Stripe gateway through the real SDK against a Stripe-compatible server on 127.0.0.1
(tests/stripe_server.py). The gateway keeps no rows, so these tests prove the same on both databases."""

import json
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orders.gateways import ChargeStatus, GatewayError, InvalidSignature, get_gateway
from tests.stripe_server import LOST, TIMEOUT, load_reference

RETURN_URL = "https://shop.example.com/orders/abc/payment-return"


@pytest.fixture
def gateway(stripe_server, settings):
    settings.PAYMENT_GATEWAY = "orders.gateways.StripeGateway"
    settings.HTTP_TIMEOUT = 0.5  # the scripted timeouts hold answers for longer than this
    return get_gateway()


def charge(gateway, key="ORD-1", token="pm_card_visa", amount="12.34", currency="EUR", **kwargs):
    return gateway.charge(Decimal(amount), currency, token, key, return_url=RETURN_URL, **kwargs)


# -- charges -----------------------------------------------------------------------------------------


def test_gateway_is_importable_from_the_gateways_module(gateway):
    from orders.gateways import StripeGateway
    from orders.stripe_gateway import StripeGateway as Implementation

    assert StripeGateway is Implementation and isinstance(gateway, Implementation)


def test_a_card_charge_creates_and_confirms_one_payment_intent_keyed_by_the_order_number(
    gateway, stripe_server
):
    result = charge(gateway)

    assert result.status == ChargeStatus.SUCCEEDED and result.succeeded and result.settled
    assert (result.amount, result.currency) == (Decimal("12.34"), "EUR")
    intent = stripe_server.payment_intent(result.reference)
    assert intent["amount"] == 1234 and intent["currency"] == "eur"
    assert intent["metadata"] == {"order_number": "ORD-1"}
    assert intent["status"] == "succeeded" and intent["payment_method"] == "pm_card_visa"
    posts = [(r.operation, r.idempotency_key) for r in stripe_server.requests if r.method == "POST"]
    assert posts == [("create", "ORD-1"), ("confirm", "ORD-1-confirm")]
    assert stripe_server.count("confirm") == 1


def test_amounts_are_sent_in_the_currency_minor_units(gateway, stripe_server):
    yen = charge(gateway, key="ORD-JPY", amount="1500", currency="JPY")
    dinar = charge(gateway, key="ORD-KWD", amount="1.234", currency="KWD")

    assert stripe_server.payment_intent(yen.reference)["amount"] == 1500
    assert yen.amount == Decimal("1500") and yen.currency == "JPY"
    assert stripe_server.payment_intent(dinar.reference)["amount"] == 1234
    assert dinar.amount == Decimal("1.234")


def test_a_card_token_is_sent_as_payment_method_data(gateway, stripe_server):
    result = charge(gateway, token="tok_visa")

    assert result.status == ChargeStatus.SUCCEEDED
    confirm = next(r for r in stripe_server.requests if r.operation == "confirm")
    assert confirm.params["payment_method_data"] == {"type": "card", "card": {"token": "tok_visa"}}


@pytest.mark.parametrize(
    "token, code, reason",
    [
        ("pm_card_chargeDeclined", "generic_decline", "Your card was declined."),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        ("tok_chargeDeclined", "generic_decline", "Your card was declined."),
    ],
)
def test_a_declined_card_gives_the_decline_code_and_the_message_for_the_customer(
    gateway, stripe_server, token, code, reason
):
    result = charge(gateway, token=token)

    assert result.status == ChargeStatus.DECLINED and not result.succeeded and result.settled
    assert (result.decline_code, result.decline_reason) == (code, reason)
    assert result.reference.startswith("pi_")
    # Asked again, Stripe's PaymentIntent says the same.
    again = gateway.retrieve("ORD-1", reference=result.reference)
    assert (again.status, again.decline_code, again.decline_reason) == (ChargeStatus.DECLINED, code, reason)


def test_an_unknown_payment_method_is_declined(gateway):
    result = charge(gateway, token="pm_card_nonsense")

    assert result.status == ChargeStatus.DECLINED
    assert (result.decline_code, result.decline_reason) == (
        "resource_missing",
        "The payment method is invalid.",
    )


def test_3d_secure_sends_the_customer_to_the_redirect_url_and_success_settles_it(gateway, stripe_server):
    result = charge(gateway, token="pm_card_threeDSecure2Required")

    assert result.status == ChargeStatus.REQUIRES_ACTION and not result.settled
    assert result.action_url == f"{stripe_server.url}/3ds/{result.reference}"
    assert stripe_server.payment_intent(result.reference)["next_action"]["redirect_to_url"]["return_url"] == (
        RETURN_URL
    )

    stripe_server.complete_3ds(result.reference)

    assert gateway.retrieve("ORD-1", reference=result.reference).status == ChargeStatus.SUCCEEDED
    assert stripe_server.count("confirm") == 1


def test_failed_3d_secure_is_a_decline(gateway, stripe_server):
    result = charge(gateway, token="pm_card_threeDSecure2Required")

    stripe_server.complete_3ds(result.reference, succeed=False)

    settled = gateway.retrieve("ORD-1", reference=result.reference)
    assert settled.status == ChargeStatus.DECLINED
    assert settled.decline_code == "payment_intent_authentication_failure"


def test_the_3d_secure_page_returns_the_customer_to_the_return_url(gateway, stripe_server):
    result = charge(gateway, token="pm_card_threeDSecure2Required")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(result.action_url + "?result=fail", timeout=5)

    assert answer.value.code == 302
    location = answer.value.headers["Location"]
    assert location.startswith(RETURN_URL + "?payment_intent=" + result.reference)
    assert "redirect_status=failed" in location
    assert gateway.retrieve("ORD-1", reference=result.reference).status == ChargeStatus.DECLINED


def test_a_processing_payment_waits_and_settles_later(gateway, stripe_server):
    stripe_server.outcome("pm_card_visa", "processing")

    result = charge(gateway)

    assert result.status == ChargeStatus.PROCESSING and not result.settled
    stripe_server.settle(result.reference)
    assert gateway.retrieve("ORD-1", reference=result.reference).status == ChargeStatus.SUCCEEDED


def test_a_processing_payment_can_fail_later(gateway, stripe_server):
    stripe_server.outcome("pm_card_visa", "processing")
    result = charge(gateway)

    stripe_server.settle(result.reference, succeed=False, decline_code="insufficient_funds")

    settled = gateway.retrieve("ORD-1", reference=result.reference)
    assert (settled.status, settled.decline_code) == (ChargeStatus.DECLINED, "insufficient_funds")


def test_authorize_then_capture_once(gateway, stripe_server):
    result = charge(gateway, capture=False)

    assert result.status == ChargeStatus.AUTHORIZED and result.settled and not result.succeeded
    assert stripe_server.payment_intent(result.reference)["capture_method"] == "manual"
    captured = gateway.capture(result.reference, "ORD-1-capture")
    assert captured.status == ChargeStatus.SUCCEEDED and captured.amount == Decimal("12.34")
    # Repeated, with the same key or another: the same answer, one capture.
    assert gateway.capture(result.reference, "ORD-1-capture").status == ChargeStatus.SUCCEEDED
    assert gateway.capture(result.reference, "ORD-1-capture-again").status == ChargeStatus.SUCCEEDED
    assert stripe_server.count("capture") == 1


def test_cancel_an_authorization_or_a_pending_3d_secure(gateway, stripe_server):
    authorized = charge(gateway, key="ORD-A", capture=False)
    waiting = charge(gateway, key="ORD-B", token="pm_card_threeDSecure2Required")

    assert gateway.cancel(authorized.reference, "ORD-A-cancel").status == ChargeStatus.CANCELED
    assert gateway.cancel(waiting.reference, "ORD-B-cancel").status == ChargeStatus.CANCELED
    assert gateway.cancel(waiting.reference, "ORD-B-cancel").status == ChargeStatus.CANCELED
    assert stripe_server.payment_intent(waiting.reference)["status"] == "canceled"
    assert gateway.retrieve("ORD-B", reference=waiting.reference).status == ChargeStatus.CANCELED
    assert stripe_server.count("cancel") == 2


def test_cancelling_a_payment_that_succeeded_meanwhile_reports_the_success(gateway, stripe_server):
    result = charge(gateway, token="pm_card_threeDSecure2Required")
    stripe_server.complete_3ds(result.reference)

    assert gateway.cancel(result.reference, "ORD-1-expire").status == ChargeStatus.SUCCEEDED
    assert stripe_server.payment_intent(result.reference)["status"] == "succeeded"


# -- refunds -----------------------------------------------------------------------------------------


def test_partial_then_full_refund_never_more_than_captured(gateway, stripe_server):
    paid = charge(gateway, amount="10.00")

    part = gateway.refund(paid.reference, "refund-1", Decimal("4.00"))
    assert (part.status, part.amount) == ("succeeded", Decimal("4.00")) and part.reference.startswith("re_")
    assert gateway.refund(paid.reference, "refund-1", Decimal("4.00")) == part  # replayed, not repeated
    rest = gateway.refund(paid.reference, "refund-2")
    assert (rest.status, rest.amount) == ("succeeded", Decimal("6.00"))
    too_much = gateway.refund(paid.reference, "refund-3", Decimal("0.01"))
    assert too_much.status == "failed" and too_much.failure_reason
    assert stripe_server.count("refund") == 2
    assert sum(r["amount"] for r in stripe_server.refunds.values()) == 1000


def test_a_pending_refund_is_reported_pending(gateway, stripe_server):
    paid = charge(gateway)
    stripe_server.refund_status = "pending"

    result = gateway.refund(paid.reference, "refund-1")

    assert result.status == "pending"
    assert stripe_server.settle_refund(result.reference, succeed=False)["status"] == "failed"


# -- lost answers are settled without a second charge ------------------------------------------------


@pytest.mark.parametrize("answer", [TIMEOUT, 500])
def test_a_confirmation_that_never_arrived_is_settled_as_never_charged(gateway, stripe_server, answer):
    stripe_server.script("confirm", answer)
    started = time.monotonic()
    with pytest.raises(GatewayError):
        charge(gateway)
    assert time.monotonic() - started < 5  # bounded by HTTP_TIMEOUT, not the SDK's 80 s

    assert gateway.retrieve("ORD-1", amount=Decimal("12.34"), currency="EUR") is None
    assert gateway.retrieve("ORD-1", amount=Decimal("12.34"), currency="EUR") is None  # asked again
    assert stripe_server.count("confirm") == 0
    # The PaymentIntent is cancelled, so a confirmation still on its way cannot take money.
    (intent,) = stripe_server.payment_intents.values()
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    # A retry of the charge with the same key does not charge either.
    assert charge(gateway).status == ChargeStatus.CANCELED
    assert stripe_server.count("confirm") == 0


def test_a_confirmation_whose_answer_was_lost_is_settled_as_charged_once(gateway, stripe_server):
    stripe_server.script("confirm", LOST)
    with pytest.raises(GatewayError):
        charge(gateway)

    settled = gateway.retrieve("ORD-1", amount=Decimal("12.34"), currency="EUR")
    assert settled.status == ChargeStatus.SUCCEEDED and settled.amount == Decimal("12.34")
    assert charge(gateway).reference == settled.reference  # a retried request: the same payment
    assert stripe_server.count("confirm") == 1
    assert len(stripe_server.payment_intents) == 1


def test_a_retried_charge_after_a_lost_answer_confirms_once(gateway, stripe_server):
    stripe_server.script("confirm", LOST)
    with pytest.raises(GatewayError):
        charge(gateway, token="pm_card_threeDSecure2Required")
    (intent_id,) = stripe_server.payment_intents
    stripe_server.complete_3ds(intent_id)

    retried = charge(gateway, token="pm_card_threeDSecure2Required")

    assert retried.status == ChargeStatus.SUCCEEDED  # the current state, not the first answer replayed
    assert stripe_server.count("confirm") == 1


@pytest.mark.parametrize("answer", [TIMEOUT, LOST, 500, 429])
def test_a_lost_create_is_settled_without_a_charge(gateway, stripe_server, answer):
    stripe_server.script("create", answer)
    with pytest.raises(GatewayError):
        charge(gateway)

    assert gateway.retrieve("ORD-1", amount=Decimal("12.34"), currency="EUR") is None
    assert stripe_server.count("confirm") == 0
    assert stripe_server.count("create") == 1  # the replay found the first one, or made the only one


def test_retrieve_by_key_replays_the_create_and_never_charges(gateway, stripe_server):
    paid = charge(gateway, key="ORD-PAID")

    assert gateway.retrieve("ORD-PAID", amount=Decimal("12.34"), currency="EUR").reference == paid.reference
    assert gateway.retrieve("ORD-NEVER", amount=Decimal("12.34"), currency="EUR") is None
    assert stripe_server.count("confirm") == 1
    assert stripe_server.count("create") == 2
    replays = [r for r in stripe_server.requests if r.operation == "create" and r.replayed]
    assert [r.idempotency_key for r in replays] == ["ORD-PAID"]


def test_retrieve_by_reference_only_reads(gateway, stripe_server):
    paid = charge(gateway)
    before = len(stripe_server.ledger)

    assert gateway.retrieve("ORD-1", reference=paid.reference).status == ChargeStatus.SUCCEEDED
    assert len(stripe_server.ledger) == before
    assert stripe_server.requests[-1].method == "GET"


def test_a_network_error_on_retrieve_is_a_gateway_error(gateway, stripe_server):
    paid = charge(gateway)
    stripe_server.script("retrieve", 503)

    with pytest.raises(GatewayError):
        gateway.retrieve("ORD-1", reference=paid.reference)


def test_the_same_key_with_another_amount_is_refused(gateway, stripe_server):
    charge(gateway, amount="10.00")

    with pytest.raises(GatewayError):
        charge(gateway, amount="11.00")
    assert stripe_server.count("confirm") == 1
    assert stripe_server.returned[-1][1]["error"]["type"] == "idempotency_error"


def test_a_wrong_secret_key_is_a_gateway_error(stripe_server, settings):
    settings.PAYMENT_GATEWAY = "orders.gateways.StripeGateway"
    settings.STRIPE_SECRET_KEY = "sk_test_wrong"

    with pytest.raises(GatewayError):
        charge(get_gateway())
    assert stripe_server.returned[-1][0] == 401


# -- the server refuses what Stripe (or our rules) refuse ------------------------------------------


def _raw_post(server, path, form, key=None):
    headers = {
        "Authorization": f"Bearer {server.api_key}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(server.url + path, data=form.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_server_refuses_a_post_without_an_idempotency_key(stripe_server):
    status, body = _raw_post(stripe_server, "/v1/payment_intents", "amount=100&currency=eur")

    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert stripe_server.payment_intents == {}


def test_the_server_refuses_a_payment_intent_without_amount_or_currency(stripe_server):
    assert (
        _raw_post(stripe_server, "/v1/payment_intents", "currency=eur", "k1")[1]["error"]["param"] == "amount"
    )
    assert (
        _raw_post(stripe_server, "/v1/payment_intents", "amount=100", "k2")[1]["error"]["param"] == "currency"
    )
    # A validation error is not stored under the key: corrected, the same key works.
    status, body = _raw_post(stripe_server, "/v1/payment_intents", "amount=100&currency=eur", "k1")
    assert status == 200 and body["object"] == "payment_intent"


def test_the_server_refuses_unknown_parameters(stripe_server):
    status, body = _raw_post(stripe_server, "/v1/payment_intents", "amount=100&currency=eur&colour=red", "k")

    assert status == 400 and body["error"]["param"] == "colour"


def test_every_gateway_post_carries_a_key_derived_from_the_order(gateway, stripe_server):
    paid = charge(gateway, capture=False)
    gateway.capture(paid.reference, "ORD-1-capture")
    gateway.refund(paid.reference, "ORD-1-refund-1", Decimal("1.00"))

    keys = [r.idempotency_key for r in stripe_server.requests if r.method == "POST"]
    assert keys == ["ORD-1", "ORD-1-confirm", "ORD-1-capture", "ORD-1-refund-1"]


# -- webhooks ----------------------------------------------------------------------------------------


def test_a_signed_event_is_verified(gateway, stripe_server):
    paid = charge(gateway)
    signed = stripe_server.webhook("payment_intent.succeeded", paid.reference)

    event = gateway.verify_webhook(signed.body, signed.signature)

    assert event == signed.event
    assert event["data"]["object"]["id"] == paid.reference


@pytest.mark.parametrize("tamper", ["secret", "body", "old", "future_signature_only", "missing", "no_v1"])
def test_an_event_that_does_not_verify_is_refused(gateway, stripe_server, tamper):
    paid = charge(gateway)
    event = stripe_server.event("payment_intent.succeeded", paid.reference)
    body = json.dumps(event).encode()
    signature = stripe_server.sign(body)
    if tamper == "secret":
        signature = stripe_server.sign(body, secret="whsec_someone_else")
    elif tamper == "body":
        body = body.replace(b'"succeeded"', b'"canceled"')
    elif tamper == "old":  # a captured event replayed after Stripe's 5 minutes of tolerance
        signature = stripe_server.sign(body, timestamp=int(time.time()) - 301)
    elif tamper == "future_signature_only":
        signature = signature.replace("v1=", "v0=")
    elif tamper == "missing":
        signature = ""
    elif tamper == "no_v1":
        signature = signature.split(",")[0]

    with pytest.raises(InvalidSignature):
        gateway.verify_webhook(body, signature)


def test_no_webhook_secret_verifies_nothing(gateway, stripe_server, settings):
    signed = stripe_server.webhook("payment_intent.succeeded", charge(gateway).reference, secret="")
    settings.STRIPE_WEBHOOK_SECRET = ""

    with pytest.raises(InvalidSignature):
        gateway.verify_webhook(signed.body, signed.signature)


# -- the server's objects are Stripe's shapes --------------------------------------------------------


def _openapi_to_json_schema(node):
    """OpenAPI 3.0's ``nullable`` as JSON Schema's null type."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _openapi_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture(scope="module")
def stripe_schema():
    schemas = _openapi_to_json_schema(load_reference()["schemas"])
    root = Resource.from_contents({"components": {"schemas": schemas}}, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:stripe", root)

    def validate(name: str, obj: dict) -> None:
        ref = {"$ref": f"urn:stripe#/components/schemas/{name}"}
        Draft202012Validator(ref, registry=registry).validate(obj)
        required = load_reference()["schemas"][name].get("required", [])
        assert set(required) <= set(obj), (name, set(required) - set(obj))

    return validate


def test_every_object_the_server_returns_matches_stripes_schemas(gateway, stripe_server, stripe_schema):
    # Every path: success, manual capture, 3-D Secure both ways, processing, declines, cancel,
    # refunds (one refused), replays, an idempotency conflict, a wrong key, an unknown id.
    paid = charge(gateway, key="A", amount="10.00")
    charge(gateway, key="A", amount="10.00")
    authorized = charge(gateway, key="B", capture=False)
    gateway.capture(authorized.reference, "B-capture")
    gateway.capture(authorized.reference, "B-capture-2")
    passed = charge(gateway, key="C", token="pm_card_threeDSecure2Required")
    stripe_server.complete_3ds(passed.reference)
    failed = charge(gateway, key="D", token="pm_card_threeDSecure2Required")
    stripe_server.complete_3ds(failed.reference, succeed=False)
    gateway.retrieve("D", reference=failed.reference)
    charge(gateway, key="E", token="pm_card_chargeDeclined")
    charge(gateway, key="F", token="tok_chargeDeclinedInsufficientFunds")
    waiting = charge(gateway, key="G", token="pm_card_threeDSecure2Required")
    gateway.cancel(waiting.reference, "G-cancel")
    gateway.retrieve("H", amount=Decimal("1.00"), currency="EUR")
    refund = gateway.refund(paid.reference, "A-refund-1", Decimal("2.50"))
    gateway.refund(paid.reference, "A-refund-2", Decimal("100"))
    with pytest.raises(GatewayError):
        charge(gateway, key="A", amount="99.00")
    gateway.client.v1.refunds.retrieve(refund.reference)
    with pytest.raises(GatewayError):
        gateway.retrieve("X", reference="pi_missing")
    _raw_post(stripe_server, "/v1/payment_intents", "currency=eur", "no-amount")
    _raw_post(stripe_server, "/v1/payment_intents", "amount=1&currency=eur")
    stripe_server.api_key = "sk_test_rotated"
    with pytest.raises(GatewayError):
        gateway.retrieve("A", reference=paid.reference)

    with pytest.raises(ValidationError):  # the check has teeth
        stripe_schema("payment_intent", {**stripe_server.payment_intent(paid.reference), "status": "paid"})
    with pytest.raises(ValidationError):
        stripe_schema("refund", {**stripe_server.refund(refund.reference), "amount": "2.50"})
    kinds = set()
    for status, body in stripe_server.returned:
        name = "error" if status >= 400 else body["object"]
        stripe_schema(name, body)
        kinds.add((status, name))
    assert {200, 400, 401, 402, 404} == {status for status, _ in kinds}
    assert {"payment_intent", "refund", "error"} == {name for _, name in kinds}
    statuses = {intent["status"] for intent in stripe_server.payment_intents.values()}
    assert statuses == {"succeeded", "canceled", "requires_payment_method"}


@pytest.mark.parametrize(
    "type, schema",
    [
        ("payment_intent.succeeded", "payment_intent"),
        ("payment_intent.payment_failed", "payment_intent"),
        ("payment_intent.canceled", "payment_intent"),
        ("charge.refunded", "charge"),
        ("refund.updated", "refund"),
        ("refund.failed", "refund"),
        ("charge.dispute.created", "dispute"),
    ],
)
def test_events_match_stripes_schemas(gateway, stripe_server, stripe_schema, type, schema):
    paid = charge(gateway)
    refund = gateway.refund(paid.reference, "refund-1", Decimal("1.00"))
    obj = refund.reference if type.startswith("refund.") else paid.reference

    signed = stripe_server.webhook(type, obj)

    stripe_schema("event", signed.event)
    stripe_schema(schema, signed.event["data"]["object"])
    assert gateway.verify_webhook(signed.body, signed.signature)["type"] == type
