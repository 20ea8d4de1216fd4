"""The order workflows: the one place where orders are placed, paid, failed, refunded and cancelled.

Views, the JSON API, admin actions and jobs call these functions. No database transaction is ever
held open across a call to the payment gateway, and every status change is a guarded transition, so
an order's money and stock agree with its status at every commit.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from orders.gateways import ChargeResult, GatewayError, PaymentGateway, get_gateway
from orders.idempotency import Lease
from orders.models import IdempotencyKey, Order, OrderLine, Payment, RecoveryPoint
from orders.pipeline import on_order_fulfilled, on_order_paid
from shop import logging as log_context
from shop.models import Product

logger = logging.getLogger(__name__)

MAX_QUANTITY = 100
MAX_LINES = 50


class OrderError(Exception):
    """An order could not be placed or changed; the message is safe to show to the customer."""


class InvalidOrder(OrderError):
    pass


class UnknownProduct(OrderError):
    def __init__(self, skus: list[str]) -> None:
        self.skus = skus
        super().__init__(f"Unknown or unavailable product: {', '.join(skus)}")


class OutOfStock(OrderError):
    def __init__(self, sku: str, requested: int, available: int) -> None:
        self.sku, self.requested, self.available = sku, requested, available
        super().__init__(f"Only {available} of {sku} in stock, {requested} requested.")


class InvalidTransition(OrderError):
    pass


class PaymentGatewayError(OrderError):
    """The gateway failed during checkout. ``order`` is payment_failed if the gateway confirmed that
    nothing was charged, or still pending_payment (to be settled later) if it could not tell."""

    def __init__(self, order: Order, error: GatewayError) -> None:
        self.order = order
        super().__init__(f"The payment service failed: {error}")


@dataclass(frozen=True)
class ShippingAddress:
    line1: str
    city: str
    postal_code: str
    country: str


def place_order(
    *,
    email: str,
    name: str,
    shipping_address: ShippingAddress,
    items: Mapping[str, int],
    payment_token: str,
    lease: Lease | None = None,
) -> Order:
    """Reserve stock, charge, and record the outcome; return the order, paid or payment_failed.

    ``items`` maps SKU to quantity (so a SKU appears once). Raises InvalidOrder, UnknownProduct or
    OutOfStock before anything is stored or charged, and PaymentGatewayError when the gateway fails.
    A declined card is not an exception: the order comes back payment_failed with its stock released
    and a declined Payment carrying the reason.

    With the ``lease`` of an idempotency key, each step records its recovery point in the transaction
    that does its work, and a lease whose request already reserved an order resumes with that order:
    the gateway is asked what became of its charge (by the order number, its idempotency key) and the
    charge is made only if it never was. Raises LeaseLost if a retry took the key over meanwhile.
    """
    gateway = get_gateway()
    if lease is not None and lease.order_id is not None:
        return _resume(Order.objects.get(pk=lease.order_id), payment_token, lease)
    order = _reserve(email=email, name=name, shipping_address=shipping_address, items=items, lease=lease)
    return _charge(gateway, order, payment_token, lease)


def decline_reason(order: Order) -> str:
    """Why a payment_failed order's last payment failed, in words for the customer."""
    payment = order.payments.order_by("-id").first()
    return payment.decline_reason if payment else "The payment did not go through."


def _resume(order: Order, payment_token: str, lease: Lease) -> Order:
    log_context.bind(order_number=order.number)
    if order.status != Order.Status.PENDING_PAYMENT:
        return order  # settled: by the request that died, by the reconciliation job, or by staff
    gateway = get_gateway()
    if lease.recovery_point == RecoveryPoint.CHARGE_ATTEMPTED:
        try:
            result = gateway.retrieve(order.number)
        except GatewayError as error:
            raise PaymentGatewayError(order, error) from error
        if result is not None:
            _record_charge(order, result)
            return order
    return _charge(gateway, order, payment_token, lease)


def _charge(gateway: PaymentGateway, order: Order, payment_token: str, lease: Lease | None) -> Order:
    if lease is not None:
        with transaction.atomic():
            lease.advance(RecoveryPoint.CHARGE_ATTEMPTED)
    try:
        result = gateway.charge(order.total, order.currency, payment_token, idempotency_key=order.number)
    except GatewayError as error:
        try:
            settle_pending_payment(order, not_charged_reason=f"payment gateway error: {error}")
        except GatewayError:
            logger.warning("Order %s left pending_payment: gateway unreachable", order.number)
        if order.status != Order.Status.PAID:
            raise PaymentGatewayError(order, error) from error
        return order
    _record_charge(order, result)
    return order


def _reserve(
    *,
    email: str,
    name: str,
    shipping_address: ShippingAddress,
    items: Mapping[str, int],
    lease: Lease | None = None,
) -> Order:
    if not items:
        raise InvalidOrder("The order has no lines.")
    if len(items) > MAX_LINES:
        raise InvalidOrder(f"An order has at most {MAX_LINES} lines.")
    for sku, quantity in items.items():
        if not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidOrder(f"Quantity of {sku} must be between 1 and {MAX_QUANTITY}.")
    currency = settings.SHOP_CURRENCY
    with transaction.atomic():
        # Locks taken in SKU order, so two orders sharing products cannot deadlock.
        products = {
            p.sku: p for p in Product.objects.select_for_update().filter(sku__in=items).order_by("sku")
        }
        unknown = sorted(
            sku
            for sku in items
            if sku not in products or not products[sku].active or products[sku].currency != currency
        )
        if unknown:
            raise UnknownProduct(unknown)
        for sku in sorted(items):
            product, quantity = products[sku], items[sku]
            taken = Product.objects.filter(pk=product.pk, stock__gte=quantity).update(
                stock=F("stock") - quantity
            )
            if not taken:
                raise OutOfStock(sku, quantity, Product.objects.get(pk=product.pk).stock)
        order = Order.objects.create(
            email=email,
            name=name,
            shipping_line1=shipping_address.line1,
            shipping_city=shipping_address.city,
            shipping_postal_code=shipping_address.postal_code,
            shipping_country=shipping_address.country.upper(),
            currency=currency,
            total=sum((products[sku].price * q for sku, q in items.items()), Decimal("0.00")),
            stock_reserved=True,
        )
        log_context.bind(order_number=order.number)  # the request's log lines, spans, error reports
        OrderLine.objects.bulk_create(
            OrderLine(
                order=order,
                product=products[sku],
                sku=sku,
                name=products[sku].name,
                quantity=quantity,
                unit_price=products[sku].price,
            )
            for sku, quantity in sorted(items.items())
        )
        if lease is not None:
            lease.advance(RecoveryPoint.RESERVED, order=order)
    return order


def _record_charge(order: Order, result: ChargeResult) -> None:
    if result.succeeded:
        if not mark_paid(order, result) and order.status != Order.Status.PAID:
            # The order was settled as failed (or cancelled) while the charge was in flight: the customer
            # must not pay for an order we no longer honour.
            logger.warning(
                "Refunding charge %s of order %s (status %s)", result.reference, order.number, order.status
            )
            get_gateway().refund(result.reference, idempotency_key=f"{order.number}-refund")
    else:
        mark_payment_failed(order, result.decline_reason, charge_result=result)


def mark_paid(order: Order, charge_result: ChargeResult) -> bool:
    """pending_payment -> paid, recording the payment and enqueuing the pipeline in one transaction.

    Returns False (and changes nothing) if the order was no longer pending_payment.
    """
    with transaction.atomic():
        now = timezone.now()
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).update(
            status=Order.Status.PAID, paid_at=now, updated_at=now
        )
        order.refresh_from_db()
        if not changed:
            return False
        Payment.objects.create(
            order=order,
            gateway=get_gateway().name,
            gateway_reference=charge_result.reference,
            amount=charge_result.amount,
            currency=charge_result.currency,
            status=Payment.Status.SUCCEEDED,
        )
        on_order_paid(order)
    return True


def mark_payment_failed(order: Order, reason: str, *, charge_result: ChargeResult | None = None) -> bool:
    """pending_payment -> payment_failed, releasing the stock in the same transaction.

    ``charge_result`` is the declined charge, if the gateway answered. Returns False (and changes
    nothing) if the order was no longer pending_payment.
    """
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).update(
            status=Order.Status.PAYMENT_FAILED, updated_at=timezone.now()
        )
        if changed:
            _release_stock(order)
            Payment.objects.create(
                order=order,
                gateway=get_gateway().name,
                gateway_reference=charge_result.reference if charge_result else "",
                amount=order.total,
                currency=order.currency,
                status=Payment.Status.DECLINED if charge_result else Payment.Status.FAILED,
                decline_reason=reason[:255],
            )
        order.refresh_from_db()
    return bool(changed)


def settle_pending_payment(order: Order, *, not_charged_reason: str = "payment not completed") -> Order:
    """Ask the gateway what became of a pending order's charge and record it.

    No record at the gateway means the charge never happened: the order fails with
    ``not_charged_reason`` and its stock is released. GatewayError propagates (try again later).
    """
    order.refresh_from_db()
    if order.status != Order.Status.PENDING_PAYMENT:
        return order
    result = get_gateway().retrieve(order.number)
    if result is None:
        mark_payment_failed(order, not_charged_reason)
    else:
        _record_charge(order, result)
    return order


def mark_fulfilled(order: Order) -> bool:
    """paid -> fulfilled (the goods left the warehouse), enqueuing the order.fulfilled webhooks in the
    same transaction. Returns False if the order was not paid."""
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PAID).update(
            status=Order.Status.FULFILLED, updated_at=timezone.now()
        )
        order.refresh_from_db()
        if changed:
            on_order_fulfilled(order)
    return bool(changed)


def refund(order: Order) -> Order:
    """Return the customer's money for a paid or fulfilled order; status becomes refunded.

    Stock comes back only if the goods never left (the order was paid, not yet fulfilled); returned
    goods of a fulfilled order are restocked by hand.
    """
    return _refund(order, Order.Status.REFUNDED, allowed={Order.Status.PAID, Order.Status.FULFILLED})


def cancel_order(order: Order) -> Order:
    """Cancel a paid order before it is fulfilled: refund the payment and release the stock.

    An order still pending_payment cannot be cancelled (its charge may be in flight); settle it first.
    A payment_failed order needs no cancelling: it holds neither money nor stock.
    """
    return _refund(order, Order.Status.CANCELLED, allowed={Order.Status.PAID})


def _refund(order: Order, new_status: str, *, allowed: set[str]) -> Order:
    order.refresh_from_db()
    if order.status not in allowed:
        raise InvalidTransition(f"Order {order.number} is {order.get_status_display().lower()}.")
    payment = order.payments.filter(status=Payment.Status.SUCCEEDED).first()
    if payment is not None:  # outside any transaction: it is a network call, and idempotent
        get_gateway().refund(payment.gateway_reference, idempotency_key=f"{order.number}-refund")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.status not in allowed:
            order.refresh_from_db()
            raise InvalidTransition(f"Order {order.number} is {locked.get_status_display().lower()}.")
        if locked.status == Order.Status.PAID:
            _release_stock(locked)
        Order.objects.filter(pk=order.pk).update(status=new_status, updated_at=timezone.now())
        if payment is not None:
            Payment.objects.filter(pk=payment.pk).update(
                status=Payment.Status.REFUNDED, updated_at=timezone.now()
            )
    order.refresh_from_db()
    return order


def _release_stock(order: Order) -> None:
    """Give an order's stock back, at most once. Call inside the transaction that changes its status."""
    if not Order.objects.filter(pk=order.pk, stock_reserved=True).update(stock_reserved=False):
        return
    for line in order.lines.order_by("sku"):
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)


def purge_idempotency_keys(*, older_than: timedelta = timedelta(hours=24)) -> int:
    """Forget idempotency keys older than ``older_than`` (at least 24 hours). Returns how many."""
    older_than = max(older_than, timedelta(hours=24))
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


def reconcile_pending_payments(*, older_than: timedelta = timedelta(minutes=1)) -> dict[str, int]:
    """Settle with the gateway every order left in pending_payment for longer than ``older_than`` (a
    crash between reserving and recording the charge), so that none holds stock or money for long.

    Younger orders are left alone, and so are orders whose request still holds its idempotency key's
    lease: their checkout may still be talking to the gateway. An order the gateway cannot answer for
    stays pending for the next run. Returns counts by outcome.
    """
    counts = {"paid": 0, "payment_failed": 0, "unreachable": 0}
    cutoff = timezone.now() - older_than
    live = Now() - timedelta(seconds=settings.IDEMPOTENCY_LEASE)
    stuck = (
        Order.objects.filter(status=Order.Status.PENDING_PAYMENT, created_at__lt=cutoff)
        .exclude(idempotency_keys__locked_at__gte=live)
        .order_by("id")
    )
    for order in stuck:
        try:
            settle_pending_payment(order, not_charged_reason="payment not completed (reconciled)")
        except GatewayError as exc:
            logger.warning("Order %s still pending_payment: gateway unreachable (%s)", order.number, exc)
            counts["unreachable"] += 1
            continue
        if order.status in counts:
            counts[order.status] += 1
    return counts
