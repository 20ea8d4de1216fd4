from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from jobs.testing import run_jobs
from orders.gateways import FakeGateway, get_gateway
from orders.models import FakeGatewayCharge, IdempotencyKey, Order, Payment
from orders.services import (
    InvalidOrder,
    InvalidTransition,
    OutOfStock,
    PaymentGatewayError,
    UnknownProduct,
    cancel_order,
    mark_fulfilled,
    mark_paid,
    mark_payment_failed,
    purge_idempotency_keys,
    refund,
    settle_pending_payment,
)
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def stock(sku: str) -> int:
    return Product.objects.get(sku=sku).stock


def pending_order(items):
    """An order whose charge never happened: as if the process died between reserving and charging."""
    from orders.services import _reserve
    from tests.orders.conftest import ADDRESS

    return _reserve(
        email="ada@example.com", name="Ada", shipping_address=ADDRESS, items=items, actor="customer"
    )


class LateChargeGateway(FakeGateway):
    """Charges after the order was already settled as failed (a reconcile job ran in between)."""

    def charge(self, amount, currency, token, idempotency_key, **options):
        settle_pending_payment(Order.objects.get(number=idempotency_key), actor="system")
        return super().charge(amount, currency, token, idempotency_key, **options)


def test_paid_order_reserves_stock_and_records_payment(place):
    ProductFactory(sku="A", price=Decimal("19.90"), stock=5)
    ProductFactory(sku="B", price=Decimal("5.05"), stock=5)
    order = place({"A": 2, "B": 1})
    assert order.status == Order.Status.PAID and order.paid_at is not None
    assert order.total == Decimal("44.85")
    assert (stock("A"), stock("B")) == (3, 4)
    assert order.stock_reserved
    payment = order.payments.get()
    assert payment.status == Payment.Status.SUCCEEDED
    assert payment.amount == Decimal("44.85") and payment.gateway == "fake"
    assert FakeGatewayCharge.objects.get().idempotency_key == order.number


def test_order_line_keeps_the_price_at_order_time(place):
    product = ProductFactory(sku="A", price=Decimal("10.00"))
    order = place({"A": 3})
    Product.objects.filter(pk=product.pk).update(price=Decimal("99.00"))
    line = order.lines.get()
    assert (line.unit_price, line.quantity, line.line_total) == (Decimal("10.00"), 3, Decimal("30.00"))
    assert order.total == Decimal("30.00")


def test_order_token_is_unguessable_and_number_unique(place):
    ProductFactory(sku="A")
    first, second = place({"A": 1}), place({"A": 1})
    assert len(first.token) >= 43  # 32 random bytes, base64
    assert first.token != second.token and first.number != second.number


@pytest.mark.parametrize("token", ["tok_chargeDeclined", "tok_insufficient_funds"])
def test_declined_card_releases_stock(place, token):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2}, token=token)
    assert order.status == Order.Status.PAYMENT_FAILED
    assert stock("A") == 5 and not order.stock_reserved
    payment = order.payments.get()
    assert payment.status == Payment.Status.DECLINED and payment.decline_reason


def test_gateway_error_fails_the_order_releases_stock_and_raises(place):
    ProductFactory(sku="A", stock=5)
    with pytest.raises(PaymentGatewayError) as exc_info:
        place({"A": 2}, token="tok_processing_error")
    order = exc_info.value.order
    assert order.status == Order.Status.PAYMENT_FAILED
    assert "gateway error" in order.payments.get().decline_reason
    assert stock("A") == 5


def test_unknown_sku_stores_and_charges_nothing(place):
    ProductFactory(sku="A", stock=5)
    with pytest.raises(UnknownProduct) as exc_info:
        place({"A": 1, "NOPE": 1})
    assert exc_info.value.skus == ["NOPE"]
    assert not Order.objects.exists() and stock("A") == 5


def test_inactive_product_cannot_be_ordered(place):
    ProductFactory(sku="A", active=False)
    with pytest.raises(UnknownProduct):
        place({"A": 1})


def test_short_stock_names_the_sku_and_stores_nothing(place):
    ProductFactory(sku="A", stock=5)
    ProductFactory(sku="B", stock=1)
    with pytest.raises(OutOfStock) as exc_info:
        place({"A": 2, "B": 2})
    assert (exc_info.value.sku, exc_info.value.available) == ("B", 1)
    assert "B" in str(exc_info.value)
    assert stock("A") == 5 and stock("B") == 1
    assert not Order.objects.exists() and not FakeGatewayCharge.objects.exists()


@pytest.mark.parametrize("items", [{}, {"A": 0}, {"A": 101}, {f"S{i}": 1 for i in range(51)}])
def test_invalid_quantities_and_line_counts_are_refused(place, items):
    ProductFactory(sku="A")
    with pytest.raises(InvalidOrder):
        place(items)


def test_selling_the_last_unit_leaves_zero_stock(place):
    ProductFactory(sku="A", stock=1)
    assert place({"A": 1}).status == Order.Status.PAID
    assert stock("A") == 0
    with pytest.raises(OutOfStock):
        place({"A": 1})


def test_mark_paid_only_from_pending_payment(place):
    ProductFactory(sku="A")
    order = place({"A": 1})
    result = get_gateway().retrieve(order.number)
    assert mark_paid(order, result, actor="system") is False
    assert order.payments.count() == 1


def test_mark_payment_failed_does_not_touch_a_paid_order(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 1})
    assert mark_payment_failed(order, "too late", actor="system") is False
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and stock("A") == 4


def test_settle_without_gateway_record_fails_order_and_releases_stock(place):
    ProductFactory(sku="A", stock=5)
    order = pending_order({"A": 2})
    assert stock("A") == 3
    settle_pending_payment(order, actor="system")
    assert order.status == Order.Status.PAYMENT_FAILED
    assert order.payments.get().decline_reason == "payment not completed"
    assert stock("A") == 5


def test_settle_finds_a_successful_charge_and_marks_paid(place):
    ProductFactory(sku="A", stock=5)
    order = pending_order({"A": 2})
    get_gateway().charge(order.total, order.currency, "tok_visa", idempotency_key=order.number)
    settle_pending_payment(order, actor="system")
    assert order.status == Order.Status.PAID and stock("A") == 3
    assert order.payments.get().status == Payment.Status.SUCCEEDED


def test_settle_finds_a_declined_charge_and_releases_stock(place):
    ProductFactory(sku="A", stock=5)
    order = pending_order({"A": 2})
    get_gateway().charge(order.total, order.currency, "tok_chargeDeclined", idempotency_key=order.number)
    settle_pending_payment(order, actor="system")
    assert order.status == Order.Status.PAYMENT_FAILED and stock("A") == 5
    assert order.payments.get().decline_reason == "Your card was declined."


def test_settle_leaves_settled_orders_alone(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 1})
    settle_pending_payment(order, actor="system")
    assert order.status == Order.Status.PAID and order.payments.count() == 1 and stock("A") == 4


def test_charge_landing_after_order_was_failed_is_refunded(place, settings):
    settings.PAYMENT_GATEWAY = "tests.orders.test_services.LateChargeGateway"
    ProductFactory(sku="A", stock=5)
    order = place({"A": 1})
    assert order.status == Order.Status.PAYMENT_FAILED and stock("A") == 5
    assert FakeGatewayCharge.objects.get(idempotency_key=order.number).refunded_at is not None


def test_stock_is_released_at_most_once(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2}, token="tok_chargeDeclined")
    settle_pending_payment(order, actor="system")
    mark_payment_failed(order, "again", actor="system")
    assert stock("A") == 5


def test_refund_of_paid_order_returns_money_and_stock(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2})
    refund(order, actor="staff:grace")
    run_jobs()  # the gateway's refund is a job
    order.refresh_from_db()
    assert order.status == Order.Status.REFUNDED and stock("A") == 5 and not order.stock_reserved
    assert order.payments.get().status == Payment.Status.REFUNDED
    assert FakeGatewayCharge.objects.get().refunded_at is not None


def test_refund_of_fulfilled_order_returns_money_but_not_stock(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2})
    assert mark_fulfilled(order, actor="system")
    refund(order, actor="staff:grace")
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.REFUNDED and stock("A") == 3
    assert FakeGatewayCharge.objects.get().refunded_at is not None


def test_refund_twice_is_refused(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2})
    refund(order, actor="staff:grace")
    with pytest.raises(InvalidTransition):  # nothing is left to refund while the first one runs
        refund(order, actor="staff:grace")
    run_jobs()
    with pytest.raises(InvalidTransition):
        refund(order, actor="staff:grace")
    assert stock("A") == 5 and FakeGatewayCharge.objects.get().refunds.count() == 1


def test_refund_of_failed_order_is_refused(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2}, token="tok_chargeDeclined")
    with pytest.raises(InvalidTransition):
        refund(order, actor="staff:grace")


def test_cancel_paid_order_refunds_and_releases_stock(place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2})
    cancel_order(order, actor="staff:grace")
    assert order.status == Order.Status.CANCELLED and stock("A") == 5  # at once: nothing will ship
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert order.payments.get().status == Payment.Status.REFUNDED


@pytest.mark.parametrize(
    "status", ["pending_payment", "partially_shipped", "shipped", "delivered", "payment_failed", "refunded"]
)
def test_cancel_is_only_for_paid_or_ready_to_ship_orders(place, status):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 1})
    Order.objects.filter(pk=order.pk).update(status=status)
    with pytest.raises(InvalidTransition):
        cancel_order(order, actor="staff:grace")


def test_mark_fulfilled_only_from_paid(place):
    ProductFactory(sku="A")
    order = place({"A": 1}, token="tok_chargeDeclined")
    assert mark_fulfilled(order, actor="system") is False
    assert order.status == Order.Status.PAYMENT_FAILED


def test_idempotency_keys_are_kept_at_least_a_day():
    now = timezone.now()
    IdempotencyKey.objects.create(key="old", fingerprint="x", created_at=now - timedelta(hours=25))
    IdempotencyKey.objects.create(key="recent", fingerprint="x", created_at=now - timedelta(hours=23))
    assert purge_idempotency_keys(older_than=timedelta(minutes=1)) == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["recent"]
