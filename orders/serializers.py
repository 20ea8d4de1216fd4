from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.urls import reverse

from orders.events import customer_timeline, customer_view, shown_to_customer
from orders.models import Order, Payment, Refund, Shipment
from orders.pipeline import pipeline_steps
from orders.services import can_cancel


def money(amount) -> str:
    """Amounts leave the API as strings with two decimals ("19.90"), never as floats."""
    return f"{amount:.2f}"


def shipment_to_dict(shipment: Shipment) -> dict[str, Any]:
    return {
        "status": shipment.status,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "shipped_at": shipment.shipped_at.isoformat() if shipment.shipped_at else None,
        "delivered_at": shipment.delivered_at.isoformat() if shipment.delivered_at else None,
        "lines": [{"sku": item.line.sku, "quantity": item.quantity} for item in shipment.lines.all()],
    }


def order_to_dict(order: Order) -> dict[str, Any]:
    """The one JSON shape of an order, used by every API response that carries an order. A fixed
    number of queries (the order page polls it): the events are one indexed query, whatever the jobs."""
    payment = order.latest_payment()
    events = customer_timeline(order)
    shipments = list(order.shipments.prefetch_related("lines__line"))
    pipeline = pipeline_steps(order, events)
    return {
        "number": order.number,
        "token": order.token,
        "status": order.status,
        "email": order.email,
        "name": order.name,
        "shipping_address": order.shipping_address,
        "currency": order.currency,
        "total": money(order.total),
        "lines": [
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unit_price": money(line.unit_price),
                "line_total": money(line.line_total),
            }
            for line in order.lines.order_by("sku")
        ],
        "payment": None
        if payment is None
        else {
            "status": payment.status,
            "amount": money(payment.amount),
            "decline_reason": payment.decline_reason,
            "action_url": urljoin(settings.SHOP_BASE_URL, payment.action_url) if payment.action_url else "",
        },
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "pipeline": pipeline,
        "events": [customer_view(event) for event in shown_to_customer(events)],
        "shipments": [shipment_to_dict(shipment) for shipment in shipments],
        "can_cancel": can_cancel(order, shipments),
        "settled": _settled(order, pipeline, payment),
        "status_url": settings.SHOP_BASE_URL.rstrip("/") + reverse("api-order-detail", args=[order.token]),
        "page_url": settings.SHOP_BASE_URL.rstrip("/") + order.get_absolute_url(),
    }


def _settled(order: Order, pipeline: list[dict[str, Any]], payment: Payment | None) -> bool:
    """Nothing the shop is doing for the order right now: its page may stop polling."""
    if order.status == Order.Status.PENDING_PAYMENT:
        return False
    if any(step["state"] not in ("done", "skipped") for step in pipeline):
        return False
    return not (payment and Refund.objects.filter(payment=payment, status=Refund.Status.PENDING).exists())
