from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.urls import reverse

from orders.models import Order
from orders.pipeline import pipeline_steps


def money(amount) -> str:
    """Amounts leave the API as strings with two decimals ("19.90"), never as floats."""
    return f"{amount:.2f}"


def order_to_dict(order: Order) -> dict[str, Any]:
    """The one JSON shape of an order, used by every API response that carries an order."""
    payment = order.payments.order_by("-created_at", "-id").first()
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
        "pipeline": pipeline_steps(order),
        "status_url": settings.SHOP_BASE_URL.rstrip("/") + reverse("api-order-detail", args=[order.token]),
        "page_url": settings.SHOP_BASE_URL.rstrip("/") + order.get_absolute_url(),
    }
