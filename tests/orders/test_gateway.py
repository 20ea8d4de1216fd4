from decimal import Decimal

import pytest

from orders.gateways import ChargeResult, FakeGateway, GatewayError, get_gateway
from orders.models import FakeGatewayCharge

pytestmark = pytest.mark.django_db

AMOUNT = Decimal("19.90")


class DecliningGateway(FakeGateway):
    """Another gateway class, to show that the setting chooses it."""

    name = "declining"

    def charge(self, amount, currency, token, idempotency_key):
        return super().charge(amount, currency, "tok_chargeDeclined", idempotency_key)


def test_default_gateway_is_the_fake_gateway():
    assert isinstance(get_gateway(), FakeGateway)


def test_gateway_is_chosen_by_setting(settings):
    settings.PAYMENT_GATEWAY = "tests.orders.test_gateway.DecliningGateway"
    assert get_gateway().name == "declining"


def test_tok_visa_succeeds_and_is_recorded():
    result = FakeGateway().charge(AMOUNT, "EUR", "tok_visa", idempotency_key="k1")
    assert result.succeeded and result.reference.startswith("pi_") and result.amount == AMOUNT
    row = FakeGatewayCharge.objects.get(idempotency_key="k1")
    assert row.succeeded and row.amount == AMOUNT and row.reference == result.reference


@pytest.mark.parametrize(
    "token, reason",
    [
        ("tok_chargeDeclined", "Your card was declined."),
        ("tok_insufficient_funds", "Your card has insufficient funds."),
        ("tok_unknown", "The payment token is invalid."),
    ],
)
def test_decline_tokens_are_declined_with_a_reason(token, reason):
    result = FakeGateway().charge(AMOUNT, "EUR", token, idempotency_key="k1")
    assert not result.succeeded
    assert result.decline_reason == reason


def test_processing_error_raises_and_charges_nothing():
    with pytest.raises(GatewayError):
        FakeGateway().charge(AMOUNT, "EUR", "tok_processing_error", idempotency_key="k1")
    assert not FakeGatewayCharge.objects.exists()
    assert FakeGateway().retrieve("k1") is None


def test_repeated_idempotency_key_returns_first_result_and_never_charges_twice():
    gateway = FakeGateway()
    first = gateway.charge(AMOUNT, "EUR", "tok_visa", idempotency_key="k1")
    again = gateway.charge(AMOUNT, "EUR", "tok_chargeDeclined", idempotency_key="k1")
    assert again == first
    assert FakeGatewayCharge.objects.count() == 1


def test_repeated_idempotency_key_with_another_amount_is_an_error():
    gateway = FakeGateway()
    gateway.charge(AMOUNT, "EUR", "tok_visa", idempotency_key="k1")
    with pytest.raises(GatewayError):
        gateway.charge(Decimal("1.00"), "EUR", "tok_visa", idempotency_key="k1")


def test_retrieve_returns_the_earlier_charge_or_none():
    gateway = FakeGateway()
    first = gateway.charge(AMOUNT, "EUR", "tok_insufficient_funds", idempotency_key="k1")
    assert gateway.retrieve("k1") == first
    assert isinstance(first, ChargeResult)
    assert gateway.retrieve("never-charged") is None


def test_refund_marks_the_charge_refunded_once():
    gateway = FakeGateway()
    result = gateway.charge(AMOUNT, "EUR", "tok_visa", idempotency_key="k1")
    gateway.refund(result.reference, idempotency_key="k1-refund")
    refunded_at = FakeGatewayCharge.objects.get().refunded_at
    assert refunded_at is not None
    gateway.refund(result.reference, idempotency_key="k1-refund")
    assert FakeGatewayCharge.objects.get().refunded_at == refunded_at


def test_refund_of_unknown_charge_is_an_error():
    with pytest.raises(GatewayError):
        FakeGateway().refund("ch_nope", idempotency_key="x")
