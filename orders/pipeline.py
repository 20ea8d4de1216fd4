"""The order pipeline: which jobs an order's status changes enqueue, and how far they have got.

Every job carries a unique key per order and step (``order:<id>:<step>``), so calling these twice
enqueues nothing more, and the order page finds a step's job by its key. Every job about an order is
tagged ``order:<number>`` (``order_tags``), so staff find all of an order's jobs in the admin.
"""

from collections.abc import Iterable
from typing import Any

from django.urls import reverse

from jobs.api import HIGH, enqueue, enqueue_workflow, prepare
from jobs.models import Job
from orders.models import (
    Order,
    OrderEvent,
    OrderEventKind,
    OrderMessage,
    WebhookEndpoint,
    WebhookEvent,
)

# The steps the customer sees, in order, with their label once done.
STEPS = [
    ("confirmation", "Confirmation email sent"),
    ("invoice", "Invoice ready"),
    ("inventory", "Inventory synced with the warehouse"),
    ("fulfilled", "Ready to ship"),
]
STATE_LABELS = {
    "done": "Done",
    "waiting": "Waiting",
    "pending": "Up next",
    "retrying": "Retrying",
    "delayed": "Delayed",
    "skipped": "Skipped",
}
MESSAGES = {
    "waiting": "Waiting for the previous step.",
    "pending": "Coming up shortly.",
    "retrying": "This is taking a little longer than usual. We are retrying automatically.",
    "delayed": "This step is delayed. Our team has been notified and will take care of it.",
    "skipped": "Not needed any more.",
}


def job_key(order_id: int, step: str) -> str:
    return f"order:{order_id}:{step}"


def order_tags(order: Order | str) -> list[str]:
    """The tags of every job about this order (or order number): staff filter and search the admin's
    job list by ``order:<number>``."""
    return [f"order:{order if isinstance(order, str) else order.number}"]


def webhook_key(endpoint_id: int, event: str, order_id: int, message_id: int | None = None) -> str:
    key = f"webhook:{endpoint_id}:{event}:order:{order_id}"
    return key if message_id is None else f"{key}:{message_id}"


def on_order_paid(order: Order) -> None:
    """Enqueue the pipeline; called inside the transaction that marks the order paid, so the jobs exist
    if and only if the order is paid.

    send_order_confirmation (high priority) releases generate_invoice and sync_inventory when it
    succeeds; mark_order_fulfilled (ready to ship) waits for both. The follow-up email is enqueued when
    the order has shipped (``services.create_shipment``), not here.
    """
    ref, tags = {"order_id": order.id}, order_tags(order)
    confirmation = prepare(
        "send_order_confirmation", ref, priority=HIGH, unique_key=job_key(order.id, "confirmation"), tags=tags
    )
    invoice = prepare("generate_invoice", ref, unique_key=job_key(order.id, "invoice"), tags=tags)
    inventory = prepare("sync_inventory", ref, unique_key=job_key(order.id, "inventory"), tags=tags)
    fulfilled = prepare("mark_order_fulfilled", ref, unique_key=job_key(order.id, "fulfilled"), tags=tags)
    # One INSERT for the four jobs and their dependencies (eleven statements and two savepoints job by
    # job); nothing if the pipeline was enqueued before and is still running.
    enqueue_workflow(
        [confirmation, invoice, inventory, fulfilled],
        edges=[
            (confirmation, invoice),
            (confirmation, inventory),
            (invoice, fulfilled),
            (inventory, fulfilled),
        ],
    )
    enqueue_webhooks(order, WebhookEvent.ORDER_PAID)


def on_order_fulfilled(order: Order) -> None:
    """Called inside the transaction that marks the order fulfilled."""
    enqueue_webhooks(order, WebhookEvent.ORDER_FULFILLED)


def on_order_event(order: Order, event: str, **facts: Any) -> list[Job]:
    """An order event (refunded, cancelled, expired, disputed) for the webhook endpoints; called inside
    the transaction that makes the change."""
    return enqueue_webhooks(order, event, **facts)


def enqueue_webhooks(order: Order, event: str, **facts: Any) -> list[Job]:
    """Record the event's body as it is now (an ``OrderMessage``) and enqueue one delivery job per
    active endpoint subscribed to ``event``: every attempt sends this body, whatever the order became."""
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True).order_by("id") if e.wants(event)]
    if not endpoints:
        return []
    from orders.webhooks import event_body  # webhooks reads the order's pipeline: imported late

    # An order's first event of a kind keeps the plain key and id; a later one (a second partial
    # refund) is told apart by its message.
    first = not OrderMessage.objects.filter(order=order, event=event).exists()
    message = OrderMessage.objects.create(order=order, event=event, body={})
    body = event_body(event, order, message=None if first else message, created=message.created_at, **facts)
    OrderMessage.objects.filter(pk=message.pk).update(body=body)
    return [
        enqueue(
            "deliver_webhook",
            {"endpoint_id": endpoint.id, "event": str(event), "order_id": order.id, "message_id": message.id},
            unique_key=webhook_key(endpoint.id, event, order.id, None if first else message.id),
            tags=order_tags(order),
        )
        for endpoint in endpoints
    ]


# -- progress, for the order page and the API --------------------------------------------------------
# Read from the order's events (one indexed query), never from job rows: the pipeline's handlers
# write an event when a step is done or an attempt failed.

STEP_KINDS = {
    OrderEventKind.INVOICE_ISSUED: "invoice",
    OrderEventKind.INVENTORY_SYNCED: "inventory",
    OrderEventKind.READY_TO_SHIP: "fulfilled",
}
DEPENDS_ON = {"confirmation": [], "invoice": ["confirmation"], "inventory": ["confirmation"]}
DEPENDS_ON["fulfilled"] = ["invoice", "inventory"]
CLOSED = (Order.Status.CANCELLED, Order.Status.REFUNDED)


def pipeline_steps(order: Order, events: Iterable[OrderEvent] | None = None) -> list[dict[str, Any]]:
    """The state of each customer-visible step: done, waiting, pending, retrying (a failed attempt,
    another one is scheduled), delayed (gave up; staff must act) or skipped (order cancelled or
    refunded). Empty until the order is paid. Never carries error text.

    ``events`` are the order's public events, oldest first (read here if not given)."""
    if order.paid_at is None:
        return []
    if events is None:
        from orders.events import customer_timeline

        events = customer_timeline(order)
    done: dict[str, OrderEvent] = {}
    failed: dict[str, OrderEvent] = {}
    for event in events:
        step = STEP_KINDS.get(event.kind)
        if event.kind == OrderEventKind.EMAIL_SENT and event.facts.get("email") == "confirmation":
            step = "confirmation"
        if step is not None:
            done.setdefault(step, event)
        elif event.kind == OrderEventKind.STEP_FAILED:
            failed[event.facts.get("step", "")] = event
    closed = order.status in CLOSED

    states: dict[str, str] = {}
    steps = []
    for step, label in STEPS:
        if step in done:
            entry = {"step": step, "label": label, "state": "done", "message": ""}
            entry["at"] = done[step].created_at.isoformat()
            if step == "invoice":
                entry["download_url"] = reverse("order-invoice", args=[order.token])
        else:
            parents = [states[parent] for parent in DEPENDS_ON[step]]
            if closed:
                state = "skipped"
            elif step in failed:
                state = "delayed" if failed[step].facts.get("final") else "retrying"
            elif "delayed" in parents:
                state = "delayed"
            elif all(parent == "done" for parent in parents):
                state = "pending"
            else:
                state = "waiting"
            entry = {"step": step, "label": label, "state": state, "message": MESSAGES[state], "at": None}
        states[step] = entry["state"]
        entry["state_label"] = STATE_LABELS[entry["state"]]
        steps.append(entry)
    return steps
