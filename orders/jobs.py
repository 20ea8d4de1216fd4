"""The order pipeline's job types and schedules (discovered by jobs/ in every process).

Handlers are thin: they load the order and call a service. Each is idempotent (the service finds the
row that records its effect and does nothing more), and every external call has a timeout
(``HTTP_TIMEOUT``, ``EMAIL_TIMEOUT``). See ``orders.pipeline`` for how they are chained.
"""

import datetime
import logging
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from pydantic import BaseModel, Field

from jobs import scheduler
from jobs.api import HIGH, Backoff, Breaker, JobContext, PermanentError, RateLimit, Snooze, job
from orders import (
    inventory,
    invoices,
    notifications,
    payment_events,
    reports,
    services,
    warehouse,
    webhooks,
)
from orders.events import Actor
from orders.http import PermanentHTTPError, RetryLater
from orders.models import Order, PaymentEvent, Refund, Shipment, WarehouseEvent, WebhookEvent
from shop import logging as log_context

logger = logging.getLogger(__name__)


class OrderRef(BaseModel):
    order_id: int


class WebhookDeliveryRef(BaseModel):
    endpoint_id: int
    event: WebhookEvent
    order_id: int
    message_id: int | None = None


class PaymentEventRef(BaseModel):
    event_id: str


class WarehouseEventRef(BaseModel):
    event_id: str


class ShipmentRef(BaseModel):
    shipment_id: int


class RefundRef(BaseModel):
    refund_id: int


class FakeChargeRef(BaseModel):
    reference: str


class ReportDay(BaseModel):
    date: datetime.date | None = Field(
        default=None, description="Default: yesterday in the shop's time zone."
    )


class ReconcileOptions(BaseModel):
    older_than_minutes: int = Field(default=1, ge=1)


class NoOptions(BaseModel):
    pass


def _backoff() -> Backoff:
    return Backoff(base=settings.PIPELINE_RETRY_BACKOFF, cap=3600.0)


def _breaker() -> Breaker:
    """The circuit breaker of a call out (the warehouse; each webhook endpoint): while it is down, its
    jobs wait for a probe instead of using their attempts. A 429/503 with Retry-After snoozes instead,
    which never counts."""
    return Breaker(
        failures=settings.PIPELINE_BREAKER_FAILURES,
        window=settings.PIPELINE_BREAKER_WINDOW,
        cooldown=settings.PIPELINE_BREAKER_COOLDOWN,
    )


def _order(payload) -> Order:
    try:
        order = Order.objects.get(pk=payload.order_id)
    except Order.DoesNotExist:
        raise PermanentError(f"order {payload.order_id} does not exist") from None
    log_context.bind(order_number=order.number)  # the job's log lines, spans and error reports
    return order


def _step(step: str, payload: OrderRef, ctx: JobContext, work: Callable[[], dict]) -> dict:
    """Run a customer-visible pipeline step; a failed attempt is written to the order's history (so the
    order page reads events, not job rows): "being retried", or "delayed" when none is left."""
    try:
        return work()
    except Snooze:  # asked to wait, not a failure: nothing for the order's history
        raise
    except Exception as exc:
        final = isinstance(exc, PermanentError) or ctx.attempt >= ctx.max_attempts
        try:
            services.record_step_failed(
                payload.order_id, step, actor=Actor.job(ctx), attempt=ctx.attempt, final=final
            )
        except Exception:  # the order is gone, or the database: the job's own failure says enough
            logger.warning("job %s: could not record the failed %s step", ctx.job_id, step, exc_info=True)
        raise


# A network call may take HTTP_TIMEOUT to connect and again to read; leave room for both.
_NETWORK_TIMEOUT = 3 * settings.HTTP_TIMEOUT + 30


@job(
    "send_order_confirmation",
    payload=OrderRef,
    priority=HIGH,
    max_attempts=8,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
)
def send_order_confirmation(payload: OrderRef, ctx: JobContext) -> dict:
    return _step(
        "confirmation",
        payload,
        ctx,
        lambda: {"sent": notifications.send_order_confirmation(_order(payload), actor=Actor.job(ctx))},
    )


@job("generate_invoice", payload=OrderRef, max_attempts=5, backoff=_backoff(), timeout=120)
def generate_invoice(payload: OrderRef, ctx: JobContext) -> dict:
    return _step(
        "invoice",
        payload,
        ctx,
        lambda: {"invoice": invoices.generate_invoice(_order(payload), actor=Actor.job(ctx)).number},
    )


@job(
    "sync_inventory",
    payload=OrderRef,
    max_attempts=10,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
    breaker=_breaker(),
)
def sync_inventory(payload: OrderRef, ctx: JobContext) -> dict:
    def work() -> dict:
        try:
            sync = inventory.sync_inventory(_order(payload), actor=Actor.job(ctx))
        except RetryLater as exc:
            raise Snooze(exc.seconds) from exc
        except PermanentHTTPError as exc:
            raise PermanentError(str(exc)) from exc
        return {"target": sync.target, "status": sync.response_status}

    return _step("inventory", payload, ctx, work)


@job("mark_order_fulfilled", payload=OrderRef, max_attempts=5, backoff=_backoff(), timeout=_NETWORK_TIMEOUT)
def mark_order_fulfilled(payload: OrderRef, ctx: JobContext) -> dict:
    """Ready to ship: invoice and inventory are done (and, with PAYMENT_CAPTURE=on_fulfilment, the
    payment captured: no capture, no shipping)."""

    def work() -> dict:
        order = _order(payload)
        try:
            services.capture_payment(order, actor=Actor.job(ctx))
        except services.CaptureRefused as exc:  # a dead letter at once: no retry can capture it
            raise PermanentError(str(exc)) from exc
        changed = services.mark_fulfilled(order, actor=Actor.job(ctx))
        return {"fulfilled": changed, "status": order.status}

    return _step("fulfilled", payload, ctx, work)


@job(
    "send_followup_email",
    payload=OrderRef,
    max_attempts=8,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
    expires=timedelta(days=2),  # "how was your order?" days late (workers down, retries) is noise
)
def send_followup_email(payload: OrderRef, ctx: JobContext) -> dict:
    return {"sent": notifications.send_followup(_order(payload), actor=Actor.job(ctx))}


@job(
    "send_cancellation_email", payload=OrderRef, max_attempts=8, backoff=_backoff(), timeout=_NETWORK_TIMEOUT
)
def send_cancellation_email(payload: OrderRef, ctx: JobContext) -> dict:
    return {"sent": notifications.send_cancellation(_order(payload), actor=Actor.job(ctx))}


@job("send_shipping_email", payload=ShipmentRef, max_attempts=8, backoff=_backoff(), timeout=_NETWORK_TIMEOUT)
def send_shipping_email(payload: ShipmentRef, ctx: JobContext) -> dict:
    shipment = Shipment.objects.filter(pk=payload.shipment_id).select_related("order").first()
    if shipment is None:
        raise PermanentError(f"shipment {payload.shipment_id} does not exist")
    return {"sent": notifications.send_shipping(shipment, actor=Actor.job(ctx))}


@job(
    "deliver_webhook",
    payload=WebhookDeliveryRef,
    max_attempts=10,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
    # Per endpoint: one merchant's endpoint that is down holds its own deliveries, nobody else's.
    concurrency_key=lambda p: f"webhook-endpoint:{p.endpoint_id}",
    concurrency_limit=settings.WEBHOOK_CONCURRENCY,
    breaker=_breaker(),
    # per endpoint, across all workers; the endpoints' deliveries are claimed round-robin
    rate_limit=RateLimit(settings.WEBHOOK_RATE_LIMIT, key=lambda ref: ref.endpoint_id),
)
def deliver_webhook(payload: WebhookDeliveryRef, ctx: JobContext) -> dict:
    try:
        delivery = webhooks.deliver(
            payload.endpoint_id, payload.event, payload.order_id, payload.message_id, actor=Actor.job(ctx)
        )
    except RetryLater as exc:  # the endpoint is busy: ask again when it says, without using an attempt
        raise Snooze(exc.seconds) from exc
    except PermanentHTTPError as exc:
        services.record_webhook_refused(
            payload.order_id, payload.endpoint_id, payload.event, str(exc), actor=Actor.job(ctx)
        )
        raise PermanentError(str(exc)) from exc
    except Order.DoesNotExist:
        raise PermanentError(f"order {payload.order_id} does not exist") from None
    return {"status": delivery.response_status if delivery else None}


@job("daily_sales_report", payload=ReportDay, max_attempts=5, backoff=_backoff(), timeout=600)
def daily_sales_report(payload: ReportDay, ctx: JobContext) -> dict:
    report = reports.build_sales_report(payload.date or reports.yesterday())
    emailed = notifications.send_sales_report(report)
    return {"date": report.date.isoformat(), "orders": report.orders, "emailed": emailed}


@job("reconcile_pending_payments", payload=ReconcileOptions, max_attempts=1, timeout=600)
def reconcile_pending_payments(payload: ReconcileOptions, ctx: JobContext) -> dict:
    return services.reconcile_pending_payments(
        older_than=timedelta(minutes=payload.older_than_minutes), actor=Actor.job(ctx)
    )


@job("purge_idempotency_keys", payload=NoOptions, max_attempts=3, timeout=600)
def purge_idempotency_keys(payload: NoOptions, ctx: JobContext) -> dict:
    return {"deleted": services.purge_idempotency_keys()}


@job(
    "apply_payment_event",
    payload=PaymentEventRef,
    max_attempts=8,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
)
def apply_payment_event(payload: PaymentEventRef, ctx: JobContext) -> dict:
    event = PaymentEvent.objects.filter(event_id=payload.event_id).first()
    if event is None:
        raise PermanentError(f"payment event {payload.event_id} is not stored")
    try:
        outcome = payment_events.apply_event(event, actor=Actor.job(ctx))
    except payment_events.EventError as exc:
        raise PermanentError(str(exc)) from exc
    return {"outcome": outcome, "type": event.type}


@job(
    "apply_warehouse_event",
    payload=WarehouseEventRef,
    max_attempts=8,
    backoff=_backoff(),
    timeout=_NETWORK_TIMEOUT,
)
def apply_warehouse_event(payload: WarehouseEventRef, ctx: JobContext) -> dict:
    event = WarehouseEvent.objects.filter(event_id=payload.event_id).first()
    if event is None:
        raise PermanentError(f"warehouse event {payload.event_id} is not stored")
    outcome = warehouse.apply_event(event, actor=Actor.job(ctx))
    return {"outcome": outcome, "type": event.type}


@job("expire_unpaid_order", payload=OrderRef, max_attempts=10, backoff=_backoff(), timeout=_NETWORK_TIMEOUT)
def expire_unpaid_order(payload: OrderRef, ctx: JobContext) -> dict:
    return {"status": services.expire_unpaid_order(_order(payload), actor=Actor.job(ctx)).status}


def _refund_of(payload: RefundRef) -> Refund:
    refund = Refund.objects.filter(pk=payload.refund_id).select_related("payment", "order").first()
    if refund is None:
        raise PermanentError(f"refund {payload.refund_id} does not exist")
    return refund


@job("process_refund", payload=RefundRef, max_attempts=10, backoff=_backoff(), timeout=_NETWORK_TIMEOUT)
def process_refund(payload: RefundRef, ctx: JobContext) -> dict:
    refund = services.process_refund(_refund_of(payload), actor=Actor.job(ctx))
    return {"status": refund.status}


@job("issue_credit_note", payload=RefundRef, max_attempts=8, backoff=_backoff(), timeout=_NETWORK_TIMEOUT)
def issue_credit_note(payload: RefundRef, ctx: JobContext) -> dict:
    note = invoices.issue_credit_note(_refund_of(payload), actor=Actor.job(ctx))
    return {"credit_note": note.number, "emailed": notifications.send_credit_note(note, actor=Actor.job(ctx))}


@job(
    "notify_staff_of_dispute", payload=OrderRef, max_attempts=8, backoff=_backoff(), timeout=_NETWORK_TIMEOUT
)
def notify_staff_of_dispute(payload: OrderRef, ctx: JobContext) -> dict:
    return {"sent": notifications.send_dispute_alert(_order(payload))}


@job("fake_gateway_settle", payload=FakeChargeRef, max_attempts=3, backoff=_backoff())
def fake_gateway_settle(payload: FakeChargeRef, ctx: JobContext) -> dict:
    """The fake gateway's bank answers a processing payment (it succeeds) and sends the webhook."""
    from orders.gateways import FakeGateway, GatewayError

    try:
        result = FakeGateway().complete_action(payload.reference, succeed=True)
    except GatewayError as exc:
        raise PermanentError(str(exc)) from exc
    return {"status": result.status}


scheduler.declare("daily_sales_report", "0 0 * * *", "daily_sales_report", time_zone=settings.TIME_ZONE)
# Every minute: an order left pending_payment by a crash holds stock (and maybe money) until settled.
scheduler.declare("reconcile_pending_payments", settings.RECONCILE_SCHEDULE, "reconcile_pending_payments")
scheduler.declare("purge_idempotency_keys", "30 3 * * *", "purge_idempotency_keys")
