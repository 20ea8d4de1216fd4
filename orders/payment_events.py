"""Payment-provider webhooks (Stripe's events), received once and applied by a job.

``receive_event`` verifies the signature on the raw body, stores the event once (unique by its id: a
repeat is acknowledged and ignored) and enqueues ``apply_payment_event`` in the same transaction, so
the provider gets its 2xx at once and a failing event lands in the dead letters where staff can see
it and requeue it. ``apply_event`` goes through ``orders.services`` with guarded transitions: events
arriving in any order, repeated, or racing the customer's return converge on the same state.
"""

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.api import enqueue
from orders import services
from orders.events import Actor
from orders.gateways import (
    ChargeResult,
    ChargeStatus,
    InvalidSignature,
    PaymentGateway,
    from_minor_units,
    get_gateway,
)
from orders.models import Order, Payment, PaymentEvent, Refund

logger = logging.getLogger(__name__)

PAYMENT_INTENT_STATUSES = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "requires_capture": ChargeStatus.AUTHORIZED,
    "processing": ChargeStatus.PROCESSING,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "canceled": ChargeStatus.CANCELED,
    "requires_payment_method": ChargeStatus.DECLINED,
}


class EventError(Exception):
    """The event cannot be applied (no such order, a shape we do not understand): for staff."""


@dataclass(frozen=True)
class Received:
    event: PaymentEvent
    duplicate: bool


def receive_event(payload: bytes, signature: str, *, gateway: PaymentGateway | None = None) -> Received:
    """Verify, store once, enqueue. Raises InvalidSignature (nothing stored)."""
    event = (gateway or get_gateway()).verify_webhook(payload, signature)
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidSignature("The event has no id or type.")
    try:
        with transaction.atomic():
            stored = PaymentEvent.objects.create(
                event_id=event_id[:255], type=event_type[:100], payload=event
            )
            enqueue(
                "apply_payment_event", {"event_id": stored.event_id}, unique_key=f"payment-event:{event_id}"
            )
    except IntegrityError:
        return Received(PaymentEvent.objects.get(event_id=event_id[:255]), duplicate=True)
    return Received(stored, duplicate=False)


def apply_event(event: PaymentEvent, *, actor: Actor | str) -> str:
    """Apply a stored event (idempotent); returns its outcome. Unknown types are marked ignored."""
    if event.outcome != PaymentEvent.Outcome.PENDING:
        return event.outcome
    obj = (event.payload.get("data") or {}).get("object") or {}
    handler = HANDLERS.get(event.type)
    if handler is None:
        outcome, note = PaymentEvent.Outcome.IGNORED, f"no handler for {event.type}"
    else:
        note = handler(obj, actor) or ""
        outcome = PaymentEvent.Outcome.APPLIED
    PaymentEvent.objects.filter(pk=event.pk, outcome=PaymentEvent.Outcome.PENDING).update(
        outcome=outcome, note=note[:255], applied_at=timezone.now()
    )
    return outcome


def _order_of_payment_intent(obj: dict) -> Order:
    number = (obj.get("metadata") or {}).get("order_number")
    order = Order.objects.filter(number=number).first() if number else None
    if order is None and obj.get("id"):
        payment = Payment.objects.filter(gateway_reference=obj["id"]).select_related("order").first()
        order = payment.order if payment else None
    if order is None:
        raise EventError(f"no order for payment {obj.get('id')!r}")
    return order


def _charge_result(obj: dict) -> ChargeResult:
    status = PAYMENT_INTENT_STATUSES.get(obj.get("status"))
    if status is None:
        raise EventError(f"unknown payment status {obj.get('status')!r}")
    currency = str(obj.get("currency") or "").upper()
    error = obj.get("last_payment_error") or {}
    return ChargeResult(
        succeeded=status == ChargeStatus.SUCCEEDED,
        reference=str(obj.get("id") or ""),
        amount=from_minor_units(int(obj.get("amount") or 0), currency),
        currency=currency,
        decline_reason=str(
            error.get("message") or ("The payment failed." if status == ChargeStatus.DECLINED else "")
        ),
        decline_code=str(error.get("decline_code") or ""),
        status=status,
    )


def _payment_intent(obj: dict, actor: Actor | str) -> str:
    order = _order_of_payment_intent(obj)
    result = _charge_result(obj)
    if result.amount != order.total or result.currency != order.currency:
        raise EventError(
            f"payment {result.reference} is {result.amount} {result.currency}, order {order.total}"
        )
    services.record_charge(order, result, actor=actor)
    order.refresh_from_db()
    return f"order {order.number} is {order.status}"


def _refund(obj: dict, actor: Actor | str) -> str:
    """refund.updated / refund.failed: the refund row with this reference settles."""
    refund = Refund.objects.filter(gateway_reference=obj.get("id") or "-").first()
    if refund is None:
        return f"no refund {obj.get('id')!r} of ours"
    status = {"succeeded": "succeeded", "failed": "failed", "canceled": "failed"}.get(
        obj.get("status"), "pending"
    )
    services.record_refund_result(refund, status, reason=str(obj.get("failure_reason") or ""), actor=actor)
    return f"refund {refund.pk} is {status}"


def _charge_refunded(obj: dict, actor: Actor | str) -> str:
    """charge.refunded: every refund listed on the charge settles as the charge says. Stripe's API
    versions since 2022-11-15 no longer list a charge's refunds: then each pending refund of ours for
    this payment is asked of the gateway (GatewayError: the job retries)."""
    if isinstance(obj.get("refunds"), dict):
        refunds = obj["refunds"].get("data") or []
        return (
            "; ".join(_refund(item, actor) for item in refunds if isinstance(item, dict))
            or "no refunds listed"
        )
    reference = obj.get("payment_intent") or obj.get("id") or "-"
    pending = Refund.objects.filter(
        payment__gateway_reference=reference, status=Refund.Status.PENDING
    ).exclude(gateway_reference="")
    notes = []
    for refund in pending.order_by("id"):
        status, reason = get_gateway().refund_status(refund.gateway_reference)
        services.record_refund_result(refund, status, reason=reason, actor=actor)
        notes.append(f"refund {refund.pk} is {status}")
    return "; ".join(notes) or "no pending refund of ours"


def _dispute(obj: dict, actor: Actor | str) -> str:
    reference = obj.get("payment_intent") or obj.get("charge")
    payment = Payment.objects.filter(gateway_reference=reference or "-").select_related("order").first()
    if payment is None:
        raise EventError(f"no payment {reference!r} for the dispute")
    services.mark_disputed(payment.order, reason=str(obj.get("reason") or "unknown"), actor=actor)
    return f"order {payment.order.number} disputed"


HANDLERS = {
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": _payment_intent,
    "payment_intent.canceled": _payment_intent,
    "payment_intent.processing": _payment_intent,
    "payment_intent.amount_capturable_updated": _payment_intent,
    "charge.refunded": _charge_refunded,
    "refund.updated": _refund,
    "refund.failed": _refund,
    "charge.dispute.created": _dispute,
}
