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
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.urls import reverse
from django.utils import timezone

from jobs.api import enqueue
from orders import stock
from orders.events import Actor, Kind, record, record_many
from orders.gateways import ChargeResult, ChargeStatus, GatewayError, PaymentGateway, get_gateway
from orders.idempotency import Lease
from orders.models import (
    IdempotencyKey,
    Order,
    OrderEmail,
    OrderEvent,
    OrderLine,
    Payment,
    RecoveryPoint,
    Refund,
    Shipment,
    ShipmentLine,
    WebhookEvent,
)
from orders.pipeline import job_key, on_order_event, on_order_fulfilled, on_order_paid, order_tags
from shop import logging as log_context
from shop.cart import MAX_QUANTITY
from shop.models import Product

logger = logging.getLogger(__name__)

MAX_LINES = 50  # an order's lines; each line's quantity is at most MAX_QUANTITY, the cart's limit


def _money(amount) -> str:
    return f"{Decimal(amount):.2f}"


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


class CaptureRefused(OrderError):
    """The gateway answered that an authorized payment cannot be captured (the authorization lapsed or
    was voided at the bank): asking again changes nothing, so staff must look, and the order does not
    ship."""


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
    actor: Actor | str,
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
        return _resume(Order.objects.get(pk=lease.order_id), payment_token, lease, actor)
    order = _reserve(
        email=email, name=name, shipping_address=shipping_address, items=items, lease=lease, actor=actor
    )
    return _charge(gateway, order, payment_token, lease, actor)


def decline_reason(order: Order) -> str:
    """Why a payment_failed order's last payment failed, in words for the customer."""
    payment = order.latest_payment()
    return payment.decline_reason if payment else "The payment did not go through."


def _resume(order: Order, payment_token: str, lease: Lease, actor: Actor | str) -> Order:
    """The request's retry: settle what the first attempt left. A payment the gateway already answered
    for (its reference is recorded) is asked about by that reference; otherwise the charge is replayed
    with the same idempotency key, which returns the first charge's outcome if there was one and charges
    only if there was none (a gateway never confirms one key twice)."""
    log_context.bind(order_number=order.number)
    if order.status != Order.Status.PENDING_PAYMENT:
        return order  # settled: by the request that died, by the reconciliation job, or by staff
    gateway = get_gateway()
    answered = order.payments.exclude(gateway_reference="").exists()
    if lease.recovery_point == RecoveryPoint.CHARGE_ATTEMPTED and answered:
        try:
            result = _retrieve(gateway, order)
        except GatewayError as error:
            raise PaymentGatewayError(order, error) from error
        if result is not None:
            record_charge(order, result, actor=actor)
            return order
    return _charge(gateway, order, payment_token, lease, actor)


def _retrieve(gateway: PaymentGateway, order: Order) -> ChargeResult | None:
    """What the gateway knows of the order's charge: by the payment's reference once one is recorded,
    else by the order number (its idempotency key). Never charges."""
    payment = order.payments.exclude(gateway_reference="").order_by("-id").first()
    return gateway.retrieve(
        order.number,
        reference=payment.gateway_reference if payment else "",
        amount=order.total,
        currency=order.currency,
    )


def _charge(
    gateway: PaymentGateway, order: Order, payment_token: str, lease: Lease | None, actor: Actor | str
) -> Order:
    if lease is not None:
        with transaction.atomic():
            lease.advance(RecoveryPoint.CHARGE_ATTEMPTED)
    try:
        result = gateway.charge(
            order.total,
            order.currency,
            payment_token,
            idempotency_key=order.number,
            return_url=settings.SHOP_BASE_URL.rstrip("/")
            + reverse("order-payment-return", args=[order.token]),
            capture=settings.PAYMENT_CAPTURE != "on_fulfilment",
        )
    except GatewayError as error:
        try:
            settle_pending_payment(order, not_charged_reason=f"payment gateway error: {error}", actor=actor)
        except GatewayError:
            logger.warning("Order %s left pending_payment: gateway unreachable", order.number)
        waiting = order.payments.filter(status__in=Payment.WAITING).exists()
        if order.status == Order.Status.PAYMENT_FAILED or (
            order.status == Order.Status.PENDING_PAYMENT and not waiting
        ):
            raise PaymentGatewayError(order, error) from error
        return order
    record_charge(order, result, actor=actor)
    return order


def _reserve(
    *,
    email: str,
    name: str,
    shipping_address: ShippingAddress,
    items: Mapping[str, int],
    lease: Lease | None = None,
    actor: Actor | str,
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
        taken = stock.take(items, currency)
        products = taken.products
        unknown = sorted(
            sku
            for sku in items
            if sku not in products or not products[sku].active or products[sku].currency != currency
        )
        if unknown:
            raise UnknownProduct(unknown)
        if not taken.taken:
            short = next(sku for sku in sorted(items) if products[sku].stock < items[sku])
            raise OutOfStock(short, items[short], products[short].stock)
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
        record_many(
            order,
            actor,
            (Kind.PLACED, {"total": _money(order.total), "currency": currency}),
            (Kind.STOCK_RESERVED, {"lines": dict(sorted(items.items()))}),
        )
        if lease is not None:
            lease.advance(RecoveryPoint.RESERVED, order=order)
    return order


def record_charge(order: Order, result: ChargeResult, *, actor: Actor | str) -> None:
    """Record what the gateway says of the order's charge. Safe to call again with the same answer, and
    with answers in any order (the customer's return, the provider's webhook, reconciliation)."""
    if result.status in (ChargeStatus.SUCCEEDED, ChargeStatus.AUTHORIZED):
        if mark_paid(order, result, actor=actor) or _holds(order, result.reference):
            return
        # The order was settled as failed, expired or cancelled while the charge was in flight: the
        # customer must not pay for an order we no longer honour.
        logger.warning(
            "Giving back charge %s of order %s (status %s)", result.reference, order.number, order.status
        )
        gateway = get_gateway()
        if result.status == ChargeStatus.AUTHORIZED:
            gateway.cancel(result.reference, idempotency_key=f"{order.number}-void")
        else:
            gateway.refund(result.reference, idempotency_key=f"{order.number}-refund")
    elif result.status in (ChargeStatus.REQUIRES_ACTION, ChargeStatus.PROCESSING):
        mark_payment_waiting(order, result, actor=actor)
    else:
        reason = result.decline_reason or "The payment was canceled."
        mark_payment_failed(order, reason, charge_result=result, actor=actor)


def _holds(order: Order, reference: str) -> bool:
    """The order already holds this charge (paid with it): a repeated answer, nothing to give back."""
    held = (*Payment.CAPTURED, Payment.Status.AUTHORIZED)
    return order.payments.filter(gateway_reference=reference, status__in=held).exists()


def mark_paid(order: Order, charge_result: ChargeResult, *, actor: Actor | str) -> bool:
    """pending_payment -> paid, recording the payment and enqueuing the pipeline in one transaction.

    Returns False (and changes nothing) if the order was no longer pending_payment.
    """
    status = (
        Payment.Status.AUTHORIZED
        if charge_result.status == ChargeStatus.AUTHORIZED
        else Payment.Status.SUCCEEDED
    )
    with transaction.atomic():
        now = timezone.now()
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).update(
            status=Order.Status.PAID, paid_at=now, updated_at=now
        )
        if not changed:
            order.refresh_from_db()
            return False
        # What the guarded update wrote, without reading the row back.
        order.status, order.paid_at, order.updated_at = Order.Status.PAID, now, now
        payment = _record_payment(order, charge_result, status)
        kind = Kind.PAYMENT_AUTHORIZED if status == Payment.Status.AUTHORIZED else Kind.PAYMENT_CAPTURED
        record(order, kind, actor, amount=_money(payment.amount), currency=payment.currency)
        on_order_paid(order)
    return True


def mark_payment_waiting(order: Order, charge_result: ChargeResult, *, actor: Actor | str) -> bool:
    """The payment waits for the customer (3-D Secure) or the bank (processing): the order stays
    pending_payment with its stock reserved until ``settings.PAYMENT_RESERVATION_TTL``, when the
    ``expire_unpaid_order`` job enqueued here gives it up. Returns False if the order was settled."""
    with transaction.atomic():
        if not Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).exists():
            order.refresh_from_db()
            return False
        before = order.payments.filter(gateway_reference=charge_result.reference).first()
        payment = _record_payment(order, charge_result, charge_result.status)
        if before is None or before.status != payment.status:
            kind = (
                Kind.PAYMENT_REQUIRES_ACTION
                if payment.status == Payment.Status.REQUIRES_ACTION
                else Kind.PAYMENT_PROCESSING
            )
            record(order, kind, actor)
        enqueue(
            "expire_unpaid_order",
            {"order_id": order.id},
            delay=timedelta(seconds=settings.PAYMENT_RESERVATION_TTL),
            unique_key=job_key(order.id, "expiry"),
            tags=order_tags(order),
        )
    order.refresh_from_db()
    return True


def mark_payment_failed(
    order: Order, reason: str, *, charge_result: ChargeResult | None = None, actor: Actor | str
) -> bool:
    """pending_payment -> payment_failed, releasing the stock in the same transaction.

    ``charge_result`` is the declined charge, if the gateway answered. Returns False (and changes
    nothing) if the order was no longer pending_payment.
    """
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).update(
            status=Order.Status.PAYMENT_FAILED, updated_at=timezone.now()
        )
        if changed:
            record(order, Kind.PAYMENT_FAILED, actor, reason=reason[:255])
            _release_stock(order, actor)
            if charge_result is None:
                status = Payment.Status.FAILED
            elif charge_result.status == ChargeStatus.CANCELED:
                status = Payment.Status.CANCELED
            else:
                status = Payment.Status.DECLINED
            _record_payment(
                order,
                charge_result,
                status,
                decline_reason=reason[:255],
                amount=order.total,
                currency=order.currency,
            )
        order.refresh_from_db()
    return bool(changed)


def _record_payment(
    order: Order, result: ChargeResult | None, status: str, *, decline_reason: str = "", **defaults
) -> Payment:
    """The order's payment row for this charge: created once, moved forward as the charge settles
    (requires_action -> succeeded is one PaymentIntent). Call inside the order's transaction."""
    reference = result.reference if result else ""
    fields = {
        "status": status,
        "decline_reason": decline_reason or (result.decline_reason if result else ""),
        "decline_code": result.decline_code if result else "",
        "action_url": result.action_url if result else "",
    }
    payment = order.payments.filter(gateway_reference=reference).exclude(gateway_reference="").first()
    if payment is not None:
        Payment.objects.filter(pk=payment.pk).update(**fields, updated_at=timezone.now())
        payment.refresh_from_db()
        return payment
    return Payment.objects.create(
        order=order,
        gateway=get_gateway().name,
        gateway_reference=reference,
        amount=result.amount if result else defaults["amount"],
        currency=result.currency if result else defaults["currency"],
        **fields,
    )


def settle_pending_payment(
    order: Order, *, not_charged_reason: str = "payment not completed", actor: Actor | str
) -> Order:
    """Ask the gateway what became of a pending order's charge and record it.

    No record at the gateway means the charge never happened: the order fails with
    ``not_charged_reason`` and its stock is released. GatewayError propagates (try again later).
    """
    order.refresh_from_db()
    if order.status != Order.Status.PENDING_PAYMENT:
        return order
    result = _retrieve(get_gateway(), order)
    if result is None:
        mark_payment_failed(order, not_charged_reason, actor=actor)
    else:
        record_charge(order, result, actor=actor)
    return order


def expire_unpaid_order(order: Order, *, actor: Actor | str) -> Order:
    """The payment of a pending order did not settle within ``PAYMENT_RESERVATION_TTL``: cancel it at
    the gateway and release the stock once (the order becomes expired). A payment that succeeded
    meanwhile wins: the gateway is asked first, and its answer recorded."""
    order.refresh_from_db()
    if order.status != Order.Status.PENDING_PAYMENT:
        return order
    gateway = get_gateway()
    payment = order.payments.filter(status__in=Payment.WAITING).order_by("-id").first()
    if payment is not None:
        result = gateway.cancel(payment.gateway_reference, idempotency_key=f"{order.number}-cancel")
    else:
        result = _retrieve(gateway, order)
    if result is not None and result.status != ChargeStatus.CANCELED:
        record_charge(order, result, actor=actor)
        order.refresh_from_db()
        if order.status != Order.Status.PENDING_PAYMENT:
            return order
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PENDING_PAYMENT).update(
            status=Order.Status.EXPIRED, updated_at=timezone.now()
        )
        if changed:
            record(order, Kind.EXPIRED, actor)
            _release_stock(order, actor)
            if payment is not None:
                Payment.objects.filter(pk=payment.pk).update(
                    status=Payment.Status.CANCELED, updated_at=timezone.now()
                )
            order.refresh_from_db()
            on_order_event(order, WebhookEvent.ORDER_EXPIRED)
    order.refresh_from_db()
    return order


def mark_fulfilled(order: Order, *, actor: Actor | str) -> bool:
    """paid -> ready to ship (stored as "fulfilled": invoice and inventory are done), enqueuing the
    order.fulfilled webhooks in the same transaction. Returns False if the order was not paid."""
    with transaction.atomic():
        changed = Order.objects.filter(pk=order.pk, status=Order.Status.PAID).update(
            status=Order.Status.FULFILLED, updated_at=timezone.now()
        )
        order.refresh_from_db()
        if changed:
            record(order, Kind.READY_TO_SHIP, actor)
            on_order_fulfilled(order)
    return bool(changed)


class InvalidRefund(InvalidTransition):
    pass


def refund(order: Order, *, actor: Actor | str, reason: str = "Refunded by staff") -> Order:
    """Return all the customer's money still captured for a paid or ready-to-ship order. The order
    becomes refunded when the refund succeeds (a job calls the gateway).

    Stock comes back only if the goods never left (the order was paid, not yet ready to ship); returned
    goods are restocked by hand.
    """
    order.refresh_from_db()
    if order.status not in (Order.Status.PAID, Order.Status.FULFILLED):
        raise InvalidTransition(f"Order {order.number} is {order.get_status_display().lower()}.")
    request_refund(order, actor=actor, reason=reason, restock=order.status == Order.Status.PAID)
    order.refresh_from_db()
    return order


CANCELLABLE = (Order.Status.PAID, Order.Status.FULFILLED)


def can_cancel(order: Order, shipments: list | None = None) -> bool:
    """Paid or ready to ship, and nothing shipped or packed: a shipment, even one not yet handed to the
    carrier, means the goods are on their way out. ``shipments``: the order's, when already read."""
    if order.status not in CANCELLABLE:
        return False
    return not (shipments if shipments is not None else order.shipments.exists())


def cancel_order(order: Order, *, actor: Actor | str, reason: str = "Cancelled") -> Order:
    """Cancel a paid or ready-to-ship order before anything ships: the order is cancelled and its stock
    released at once (nothing will ship), its whole payment refunded by a job, and the customer told
    by email and the endpoints by order.cancelled.

    An order still pending_payment cannot be cancelled (its charge may be in flight); settle it first.
    A payment_failed order needs no cancelling: it holds neither money nor stock. An order with a
    shipment cannot be cancelled any more (the shipment is created under the same row lock).
    """
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.status not in CANCELLABLE:
            order.refresh_from_db()
            raise InvalidTransition(f"Order {order.number} is {locked.get_status_display().lower()}.")
        if locked.shipments.exists():
            order.refresh_from_db()
            raise InvalidTransition(f"Order {order.number} has a shipment; it can no longer be cancelled.")
        Order.objects.filter(pk=order.pk).update(status=Order.Status.CANCELLED, updated_at=timezone.now())
        record(locked, Kind.CANCELLED, actor, reason=reason[:255])
        _release_stock(locked, actor)
        order.refresh_from_db()
        if _captured(order) is not None:
            request_refund(order, actor=actor, reason=reason)
        on_order_event(order, WebhookEvent.ORDER_CANCELLED)
        enqueue(
            "send_cancellation_email",
            {"order_id": order.id},
            unique_key=job_key(order.id, "cancellation"),
            tags=order_tags(order),
        )
    _void_authorization(order, actor)
    order.refresh_from_db()
    return order


def _void_authorization(order: Order, actor: Actor | str) -> None:
    """A cancelled order's payment that was only authorized (PAYMENT_CAPTURE=on_fulfilment) is let go at
    the gateway, after the cancellation committed (a network call). If the gateway cannot be reached
    the authorization stays on record, and lapses at the bank by itself; staff see it authorized."""
    payment = order.payments.filter(status=Payment.Status.AUTHORIZED).order_by("-id").first()
    if payment is None:
        return
    try:
        result = get_gateway().cancel(payment.gateway_reference, idempotency_key=f"{order.number}-void")
    except GatewayError as exc:
        logger.warning("Order %s: the authorization could not be voided (%s)", order.number, exc)
        return
    if result.status == ChargeStatus.CANCELED:
        Payment.objects.filter(pk=payment.pk, status=Payment.Status.AUTHORIZED).update(
            status=Payment.Status.CANCELED, updated_at=timezone.now()
        )


def _captured(order: Order) -> Payment | None:
    return order.payments.filter(status__in=Payment.CAPTURED).order_by("-id").first()


def refundable(order: Order) -> tuple[Payment | None, Decimal, dict[str, int]]:
    """(the captured payment, the amount left to refund, SKU -> quantity left to refund)."""
    payment = _captured(order)
    if payment is None:
        return None, Decimal("0.00"), {}
    open_refunds = payment.refunds.exclude(status=Refund.Status.FAILED)
    taken = sum((r.amount for r in open_refunds), Decimal("0.00"))
    left = {line.sku: line.quantity for line in order.lines.all()}
    for r in open_refunds:
        for sku, quantity in (r.lines or {}).items():
            left[sku] = left.get(sku, 0) - int(quantity)
    return payment, payment.amount - taken, left


def request_refund(
    order: Order,
    *,
    actor: Actor | str,
    reason: str,
    amount: Decimal | None = None,
    lines: Mapping[str, int] | None = None,
    restock: bool = False,
) -> Refund:
    """Ask for money back: the whole remaining amount, some lines (SKU -> quantity, at their prices), or
    an amount. The refund row and its ``process_refund`` job are created in one transaction under the
    order's row lock, so concurrent refunds never add up to more than was captured. Raises
    InvalidRefund with a message for staff."""
    if not reason.strip():
        raise InvalidRefund("Give a reason for the refund.")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        payment, left_amount, left_lines = refundable(locked)
        if payment is None:
            raise InvalidRefund(f"Order {order.number} has no captured payment to refund.")
        if lines:
            prices = {line.sku: line.unit_price for line in locked.lines.all()}
            for sku, quantity in lines.items():
                if sku not in prices:
                    raise InvalidRefund(f"Order {order.number} has no line {sku}.")
                if not isinstance(quantity, int) or not 1 <= quantity <= left_lines.get(sku, 0):
                    raise InvalidRefund(f"At most {left_lines.get(sku, 0)} of {sku} can still be refunded.")
            amount = sum((prices[sku] * q for sku, q in lines.items()), Decimal("0.00"))
        elif amount is None:
            amount = left_amount
        amount = Decimal(amount).quantize(Decimal("0.01"))
        if amount <= 0:
            raise InvalidRefund(f"Nothing is left to refund on order {order.number}.")
        if amount > left_amount:
            raise InvalidRefund(f"At most {left_amount} {locked.currency} can still be refunded.")
        refund = Refund.objects.create(
            order=locked,
            payment=payment,
            amount=amount,
            currency=payment.currency,
            lines=dict(lines or {}),
            reason=reason.strip()[:255],
            actor=str(Actor.of(actor))[:200],
            restock=restock,
        )
        _record_refund_requested(refund, actor)
        enqueue(
            "process_refund",
            {"refund_id": refund.id},
            unique_key=f"refund:{refund.id}",
            tags=order_tags(locked),
        )
    return refund


def _record_refund_requested(refund: Refund, actor: Actor | str) -> None:
    record(
        refund.order_id,
        Kind.REFUND_REQUESTED,
        actor,
        refund=refund.pk,
        amount=_money(refund.amount),
        currency=refund.currency,
        lines=refund.lines,
        reason=refund.reason,
    )


def process_refund(refund: Refund, *, actor: Actor | str) -> Refund:
    """Call the gateway for a pending refund (the refund row is the idempotency key, so a retry after a
    timeout or a crash never refunds twice) and record its answer. GatewayError propagates: retry."""
    refund.refresh_from_db()
    if refund.status != Refund.Status.PENDING:
        return refund
    result = get_gateway().refund(
        refund.payment.gateway_reference, idempotency_key=f"refund-{refund.id}", amount=refund.amount
    )
    return record_refund_result(
        refund, result.status, reference=result.reference, reason=result.failure_reason, actor=actor
    )


def retry_refund(refund: Refund, *, actor: Actor | str) -> Refund:
    """Staff try a failed refund again: back to pending, with a new job (and a new idempotency key)."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=refund.order_id)
        refund.refresh_from_db()
        if refund.status != Refund.Status.FAILED:
            raise InvalidRefund(f"Refund {refund.pk} is {refund.status}, not failed.")
        _, left_amount, _ = refundable(locked)
        if refund.amount > left_amount:
            raise InvalidRefund(f"At most {left_amount} {locked.currency} can still be refunded.")
        attempt = Refund.objects.create(
            order=locked,
            payment=refund.payment,
            amount=refund.amount,
            currency=refund.currency,
            lines=refund.lines,
            reason=f"{refund.reason} (retry of refund {refund.pk})"[:255],
            actor=str(Actor.of(actor))[:200],
            restock=refund.restock,
        )
        _record_refund_requested(attempt, actor)
        enqueue(
            "process_refund",
            {"refund_id": attempt.id},
            unique_key=f"refund:{attempt.id}",
            tags=order_tags(locked),
        )
    return attempt


def record_refund_result(
    refund: Refund, status: str, *, reference: str = "", reason: str = "", actor: Actor | str
) -> Refund:
    """pending -> succeeded or failed (a "pending" answer waits for the provider's webhook), once. A
    succeeded refund moves the payment's status by the sum of refunds, refunds the order when all is
    returned, releases the stock it was asked to, and issues a credit note and an order.refunded event."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=refund.order_id)
        refund.refresh_from_db()
        if reference and not refund.gateway_reference:
            Refund.objects.filter(pk=refund.pk).update(gateway_reference=reference)
        if refund.status != Refund.Status.PENDING or status == "pending":
            refund.refresh_from_db()
            return refund
        if status != "succeeded":
            failure = (reason or "The gateway refused the refund.")[:255]
            Refund.objects.filter(pk=refund.pk).update(status=Refund.Status.FAILED, failure_reason=failure)
            record(locked, Kind.REFUND_FAILED, actor, refund=refund.pk, reason=failure)
            refund.refresh_from_db()
            return refund
        Refund.objects.filter(pk=refund.pk).update(status=Refund.Status.SUCCEEDED)
        payment = refund.payment
        returned = sum(
            (r.amount for r in payment.refunds.filter(status=Refund.Status.SUCCEEDED)), Decimal("0.00")
        )
        whole = returned >= payment.amount
        Payment.objects.filter(pk=payment.pk).update(
            status=Payment.Status.REFUNDED if whole else Payment.Status.PARTIALLY_REFUNDED,
            updated_at=timezone.now(),
        )
        record(
            locked,
            Kind.REFUND_SUCCEEDED,
            actor,
            refund=refund.pk,
            amount=_money(refund.amount),
            currency=refund.currency,
        )
        if refund.restock:
            _release_stock(locked, actor)
        if whole and locked.status in (Order.Status.PAID, Order.Status.FULFILLED):
            Order.objects.filter(pk=locked.pk).update(status=Order.Status.REFUNDED, updated_at=timezone.now())
        enqueue(
            "issue_credit_note",
            {"refund_id": refund.id},
            unique_key=f"refund:{refund.id}:credit-note",
            tags=order_tags(locked),
        )
        locked.refresh_from_db()
        on_order_event(locked, WebhookEvent.ORDER_REFUNDED, refund=refund)
    refund.refresh_from_db()
    return refund


def capture_payment(order: Order, *, actor: Actor | str) -> Payment | None:
    """Capture the order's authorized payment (PAYMENT_CAPTURE=on_fulfilment), once; the goods ship only
    after this. Only a paid order's: a cancelled one's authorization is voided, never captured.
    GatewayError propagates (no answer: try again); a capture the gateway refuses raises CaptureRefused,
    for staff to look at."""
    order.refresh_from_db()
    payment = order.payments.filter(status=Payment.Status.AUTHORIZED).order_by("-id").first()
    if payment is None or order.status != Order.Status.PAID:
        return _captured(order)
    result = get_gateway().capture(payment.gateway_reference, idempotency_key=f"{order.number}-capture")
    if result.status != ChargeStatus.SUCCEEDED:
        raise CaptureRefused(
            f"The payment {payment.gateway_reference} of order {order.number} cannot be captured: "
            f"it is {result.status}."
        )
    with transaction.atomic():
        if Payment.objects.filter(pk=payment.pk, status=Payment.Status.AUTHORIZED).update(
            status=Payment.Status.SUCCEEDED, updated_at=timezone.now()
        ):
            record(
                order, Kind.PAYMENT_CAPTURED, actor, amount=_money(payment.amount), currency=payment.currency
            )
    payment.refresh_from_db()
    return payment


def mark_disputed(order: Order, *, reason: str, amount: Decimal | None = None, actor: Actor | str) -> bool:
    """The customer's bank opened a dispute: the order is marked, staff are told by email and the
    order.disputed event is sent, once. Returns False if it was marked already."""
    with transaction.atomic():
        now = timezone.now()
        if not Order.objects.filter(pk=order.pk, disputed_at=None).update(disputed_at=now, updated_at=now):
            return False
        order.refresh_from_db()
        record(order, Kind.DISPUTED, actor, reason=reason[:255])
        on_order_event(order, WebhookEvent.ORDER_DISPUTED, dispute={"reason": reason})
        enqueue(
            "notify_staff_of_dispute",
            {"order_id": order.id},
            unique_key=job_key(order.id, "dispute"),
            tags=order_tags(order),
        )
    return True


def _release_stock(order: Order, actor: Actor | str) -> None:
    """Give an order's stock back, at most once. Call inside the transaction that changes its status."""
    if not Order.objects.filter(pk=order.pk, stock_reserved=True).update(stock_reserved=False):
        return
    lines = list(order.lines.order_by("sku"))
    for line in lines:
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
    record(order, Kind.STOCK_RELEASED, actor, lines={line.sku: line.quantity for line in lines})


def purge_idempotency_keys(*, older_than: timedelta = timedelta(hours=24)) -> int:
    """Forget idempotency keys older than ``older_than`` (at least 24 hours). Returns how many."""
    older_than = max(older_than, timedelta(hours=24))
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


def reconcile_pending_payments(
    *, older_than: timedelta = timedelta(minutes=1), actor: Actor | str
) -> dict[str, int]:
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
        .exclude(payments__status__in=Payment.WAITING)  # the customer or the bank has until the expiry
        .order_by("id")
    )
    for order in stuck:
        try:
            settle_pending_payment(
                order, not_charged_reason="payment not completed (reconciled)", actor=actor
            )
        except GatewayError as exc:
            logger.warning("Order %s still pending_payment: gateway unreachable (%s)", order.number, exc)
            counts["unreachable"] += 1
            continue
        if order.status in counts:
            counts[order.status] += 1
    return counts


# -- shipments ------------------------------------------------------------------------------------------


class InvalidShipment(InvalidTransition):
    pass


SHIPPABLE = (Order.Status.FULFILLED, Order.Status.PARTIALLY_SHIPPED)


def unshipped(order: Order) -> dict[str, int]:
    """SKU -> quantity not yet in any shipment (packed, shipped or delivered)."""
    left = {line.sku: line.quantity for line in order.lines.all()}
    for item in ShipmentLine.objects.filter(shipment__order=order).select_related("line"):
        left[item.line.sku] -= item.quantity
    return left


def create_shipment(
    order: Order,
    *,
    lines: Mapping[str, int],
    actor: Actor | str,
    carrier: str = "",
    tracking_number: str = "",
    tracking_url: str = "",
    warehouse_id: str | None = None,
    shipped: bool = False,
) -> Shipment:
    """A shipment of some of a ready-to-ship order's lines (SKU -> quantity), never more than is left to
    ship, checked under the order's row lock (so two staff, or staff and the warehouse, cannot ship one
    line twice, nor ship an order a customer is cancelling). ``shipped`` hands it to the carrier at
    once. Raises InvalidShipment with a message for staff or the warehouse."""
    if not lines:
        raise InvalidShipment("Pick at least one line to ship.")
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.status not in SHIPPABLE:
            raise InvalidShipment(
                f"Order {locked.number} is {locked.get_status_display().lower()}; only orders ready to "
                "ship or partially shipped can ship."
            )
        by_sku = {line.sku: line for line in locked.lines.all()}
        left = unshipped(locked)
        for sku, quantity in lines.items():
            if sku not in by_sku:
                raise InvalidShipment(f"Order {locked.number} has no line {sku}.")
            if not isinstance(quantity, int) or quantity < 1:
                raise InvalidShipment(f"The quantity of {sku} must be a whole number of at least 1.")
            if quantity > left[sku]:
                raise InvalidShipment(
                    f"Only {left[sku]} of {sku} left to ship ({by_sku[sku].quantity} ordered), "
                    f"{quantity} requested."
                )
        shipment = Shipment.objects.create(
            order=locked,
            warehouse_id=warehouse_id,
            carrier=carrier[:100],
            tracking_number=tracking_number[:100],
            tracking_url=tracking_url[:500],
        )
        ShipmentLine.objects.bulk_create(
            ShipmentLine(shipment=shipment, line=by_sku[sku], quantity=q) for sku, q in sorted(lines.items())
        )
        record(
            locked,
            Kind.SHIPMENT_CREATED,
            actor,
            shipment=shipment.pk,
            lines=dict(sorted(lines.items())),
            carrier=shipment.carrier,
        )
        if shipped:
            _ship(locked, shipment, actor)
    shipment.refresh_from_db()
    order.refresh_from_db()
    return shipment


def mark_shipment_shipped(
    shipment: Shipment,
    *,
    actor: Actor | str,
    carrier: str = "",
    tracking_number: str = "",
    tracking_url: str = "",
) -> bool:
    """created -> shipped, once: the order moves to partially shipped or shipped, the customer gets a
    shipping email (a job) and the endpoints order.shipped. Returns False if it had shipped already."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=shipment.order_id)
        shipment.refresh_from_db()
        if shipment.status != Shipment.Status.CREATED:
            return False
        tracking = {
            "carrier": carrier[:100],
            "tracking_number": tracking_number[:100],
            "tracking_url": tracking_url[:500],
        }
        tracking = {name: value for name, value in tracking.items() if value}
        if tracking:
            Shipment.objects.filter(pk=shipment.pk).update(**tracking)
            shipment.refresh_from_db()
        _ship(locked, shipment, actor)
    shipment.refresh_from_db()
    return True


def _ship(order: Order, shipment: Shipment, actor: Actor | str) -> None:
    now = timezone.now()
    if not Shipment.objects.filter(pk=shipment.pk, status=Shipment.Status.CREATED).update(
        status=Shipment.Status.SHIPPED, shipped_at=now
    ):
        return
    shipment.refresh_from_db()
    status = _settle_shipping_status(order)
    record(
        order,
        Kind.SHIPMENT_SHIPPED,
        actor,
        shipment=shipment.pk,
        carrier=shipment.carrier,
        tracking_number=shipment.tracking_number,
        tracking_url=shipment.tracking_url,
        status=status,
    )
    order.refresh_from_db()
    on_order_event(order, WebhookEvent.ORDER_SHIPPED, shipment=_shipment_fact(shipment))
    enqueue(
        "send_shipping_email",
        {"shipment_id": shipment.pk},
        unique_key=f"shipment:{shipment.pk}:email",
        tags=order_tags(order),
    )
    if status == Order.Status.SHIPPED:
        enqueue(
            "send_followup_email",
            {"order_id": order.id},
            delay=timedelta(seconds=settings.FOLLOWUP_DELAY),
            unique_key=job_key(order.id, "followup"),
            tags=order_tags(order),
        )


def mark_shipment_delivered(shipment: Shipment, *, actor: Actor | str) -> bool:
    """shipped -> delivered, once (a shipment still packed is shipped first); the order is delivered when
    every line shipped and every shipment is delivered. Sends order.delivered. False if it was already."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=shipment.order_id)
        shipment.refresh_from_db()
        if shipment.status == Shipment.Status.CREATED:
            _ship(locked, shipment, actor)
        if not Shipment.objects.filter(pk=shipment.pk, status=Shipment.Status.SHIPPED).update(
            status=Shipment.Status.DELIVERED, delivered_at=timezone.now()
        ):
            return False
        shipment.refresh_from_db()
        status = _settle_shipping_status(locked)
        record(locked, Kind.SHIPMENT_DELIVERED, actor, shipment=shipment.pk, status=status)
        locked.refresh_from_db()
        on_order_event(locked, WebhookEvent.ORDER_DELIVERED, shipment=_shipment_fact(shipment))
    return True


def _shipment_fact(shipment: Shipment) -> dict:
    return {
        "id": shipment.pk,
        "status": shipment.status,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "lines": {item.line.sku: item.quantity for item in shipment.lines.select_related("line")},
    }


def _settle_shipping_status(order: Order) -> str:
    """The order's status from its shipments: partially shipped while some units have not left, shipped
    when every unit left, delivered when every unit left and every shipment arrived. Call under the
    order's row lock."""
    ordered = {line.pk: line.quantity for line in order.lines.all()}
    left = dict(ordered)
    all_delivered = True
    for shipment in order.shipments.prefetch_related("lines"):
        if shipment.status == Shipment.Status.CREATED:
            continue
        all_delivered &= shipment.status == Shipment.Status.DELIVERED
        for item in shipment.lines.all():
            left[item.line_id] -= item.quantity
    if any(left.values()):
        status = Order.Status.PARTIALLY_SHIPPED
    elif all_delivered:
        status = Order.Status.DELIVERED
    else:
        status = Order.Status.SHIPPED
    Order.objects.filter(pk=order.pk).update(status=status, updated_at=timezone.now())
    return status


# -- what the pipeline's jobs record -------------------------------------------------------------------


def add_staff_note(order: Order, *, actor: Actor | str, text: str) -> OrderEvent:
    """A staff member's note on the order's history (never shown to the customer)."""
    text = text.strip()
    if not text:
        raise InvalidTransition("The note is empty.")
    with transaction.atomic():
        return record(order, Kind.STAFF_NOTE, actor, text=text[:2000])


def record_email_sent(order: Order, kind: str, *, actor: Actor | str, label: str) -> bool:
    """The customer email of ``kind`` went out: its sent-marker and its event, together. False if a
    concurrent run recorded it first (the duplicate the at-least-once contract allows)."""
    try:
        with transaction.atomic():
            OrderEmail.objects.create(order=order, kind=kind, recipient=order.email, sent_at=timezone.now())
            record(order, Kind.EMAIL_SENT, actor, email=kind, label=label)
    except IntegrityError:
        return False
    return True


def record_document_email_sent(
    order: Order, model, pk: int, *, actor: Actor | str, email: str, label: str
) -> bool:
    """A shipping or credit-note email went out: ``emailed_at`` on its row and the event, once."""
    with transaction.atomic():
        if not model.objects.filter(pk=pk, emailed_at=None).update(emailed_at=timezone.now()):
            return False
        record(order, Kind.EMAIL_SENT, actor, email=email, label=label)
    return True


def record_invoice_issued(invoice, *, actor: Actor | str) -> None:
    """Call in the transaction that stores the invoice."""
    record(invoice.order_id, Kind.INVOICE_ISSUED, actor, invoice=invoice.number)


def record_credit_note_issued(note, *, actor: Actor | str) -> None:
    """Call in the transaction that stores the credit note."""
    record(note.order_id, Kind.CREDIT_NOTE_ISSUED, actor, credit_note=note.number, refund=note.refund_id)


def record_inventory_synced(sync, *, actor: Actor | str) -> None:
    """Call in the transaction that stores the sync."""
    record(sync.order_id, Kind.INVENTORY_SYNCED, actor, response_status=sync.response_status)


def record_webhook_delivery(delivery, *, actor: Actor | str) -> None:
    """Call in the transaction that stores the delivery."""
    record(
        delivery.order_id,
        Kind.WEBHOOK_DELIVERED,
        actor,
        event=delivery.event,
        endpoint=delivery.endpoint_id,
        delivery=delivery.pk,
        response_status=delivery.response_status,
    )


def record_webhook_refused(
    order_id: int, endpoint_id: int, event: str, error: str, *, actor: Actor | str
) -> None:
    """An endpoint refused an event for good (4xx): staff see it in the history."""
    with transaction.atomic():
        record(order_id, Kind.WEBHOOK_REFUSED, actor, event=event, endpoint=endpoint_id, error=error[:255])


def record_step_failed(order_id: int, step: str, *, actor: Actor | str, attempt: int, final: bool) -> None:
    """A pipeline step's attempt failed; ``final`` when no attempt is left. The customer sees "being
    retried" or "delayed", never the error (staff find it on the job, linked from the event)."""
    with transaction.atomic():
        record(order_id, Kind.STEP_FAILED, actor, step=step, attempt=attempt, final=final)
