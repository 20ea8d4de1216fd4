"""Signed webhooks: order events pushed to the endpoints staff configure in admin.

Each delivery is one job per endpoint and event (``deliver_webhook``), retried with backoff; the
``WebhookDelivery`` row written after a 2xx answer makes a repeated job send nothing. The body is
signed like Stripe's: header ``X-Shop-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.
A receiver checks it with ``verify_signature`` (stdlib only, meant to be copied).
"""

import hashlib
import hmac
import json
import time
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from orders.events import Actor
from orders.http import post_json
from orders.models import Order, OrderMessage, WebhookDelivery, WebhookEndpoint
from orders.serializers import order_to_dict

SIGNATURE_HEADER = "X-Shop-Signature"


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The signature header value for ``body``, signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(header: str, body: bytes, secret: str, tolerance: int = 300) -> bool:
    """True if ``header`` (the X-Shop-Signature value) signs ``body`` with ``secret`` and was made
    within ``tolerance`` seconds of now; False otherwise, never an exception.

    Verify the raw request body, before any JSON parsing. The timestamp check stops an attacker who
    captured one request from replaying it later.
    """
    try:
        pairs = [item.strip().split("=", 1) for item in header.split(",")]
        t = int(next(v for k, v in pairs if k == "t"))
        signatures = [v for k, v in pairs if k == "v1"]
    except (StopIteration, ValueError, AttributeError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s) for s in signatures)


def event_body(
    event: str, order: Order, *, message: OrderMessage | None = None, created=None, **facts: Any
) -> dict[str, Any]:
    """The event as the order is at this moment (recorded in an OrderMessage when the change happens).
    Its id is ``<event>:<number>``, with the message's id added for a later event of the same kind (a
    second partial refund); ``created`` is when it happened."""
    data = order_to_dict(order)
    for live in ("pipeline", "events", "settled", "can_cancel"):  # the page's, not the event's
        data.pop(live, None)
    event_id = f"{event}:{order.number}" + (f":{message.pk}" if message is not None else "")
    at = created.timestamp() if created is not None else time.time()
    body = {"id": event_id, "type": event, "created": int(at), "data": data}
    for name, value in facts.items():
        body[name] = _fact(value)
    return body


def _fact(value: Any) -> Any:
    from orders.models import Refund

    if isinstance(value, Refund):
        return {
            "id": value.pk,
            "amount": f"{value.amount:.2f}",
            "currency": value.currency,
            "lines": value.lines,
            "reason": value.reason,
        }
    return value


def deliver(
    endpoint_id: int, event: str, order_id: int, message_id: int | None = None, *, actor: Actor | str
) -> WebhookDelivery | None:
    """Send ``event`` about the order to the endpoint once. None if the endpoint was deleted or
    deactivated meanwhile. Raises orders.http.TransientHTTPError (retry) or PermanentHTTPError."""
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, active=True).first()
    if endpoint is None:
        return None
    if message_id is None:  # a job enqueued before events were recorded: the order's first of its kind
        first = OrderMessage.objects.filter(order_id=order_id, event=event).order_by("id").first()
        message_id = first.pk if first else None
    done = WebhookDelivery.objects.filter(
        endpoint=endpoint, event=event, order_id=order_id, message_id=message_id
    ).first()
    if done is not None:
        return done
    order = Order.objects.get(pk=order_id)
    if message_id is not None:
        recorded = OrderMessage.objects.get(pk=message_id).body
    else:
        recorded = event_body(event, order)
    body = json.dumps(recorded, separators=(",", ":")).encode()
    headers = {
        SIGNATURE_HEADER: sign(body, endpoint.secret),
        "X-Shop-Event": event,
        "X-Shop-Delivery": recorded["id"],
    }
    status = post_json(endpoint.url, body, headers=headers)
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                endpoint=endpoint,
                event=event,
                order=order,
                message_id=message_id,
                response_status=status,
                delivered_at=timezone.now(),
            )
            from orders import services  # services -> pipeline -> webhooks: imported late

            services.record_webhook_delivery(delivery, actor=actor)
            return delivery
    except IntegrityError:  # a concurrent run of the same job got there first
        return WebhookDelivery.objects.get(endpoint=endpoint, event=event, order=order, message_id=message_id)
