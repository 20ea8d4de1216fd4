"""The order pipeline: which jobs an order's status changes enqueue, and how far they have got.

Every job carries a unique key per order and step (``order:<id>:<step>``), so calling these twice
enqueues nothing more, and the order page finds a step's job by its key.
"""

from datetime import timedelta
from typing import Any

from django.conf import settings

from jobs.api import HIGH, enqueue, prepare
from jobs.models import Job, JobStatus
from orders.models import (
    InventorySync,
    Invoice,
    Order,
    OrderEmail,
    OrderMessage,
    WebhookEndpoint,
    WebhookEvent,
)

# The steps the customer sees, in order, with their label once done.
STEPS = [
    ("confirmation", "Confirmation email sent"),
    ("invoice", "Invoice ready"),
    ("inventory", "Inventory synced with the warehouse"),
    ("fulfilled", "Fulfilled"),
]
STATE_LABELS = {
    "done": "Done",
    "waiting": "Waiting",
    "pending": "Up next",
    "running": "In progress",
    "retrying": "Retrying",
    "delayed": "Delayed",
    "skipped": "Skipped",
}
MESSAGES = {
    "waiting": "Waiting for the previous step.",
    "pending": "Coming up shortly.",
    "running": "In progress.",
    "retrying": "This is taking a little longer than usual. We are retrying automatically.",
    "delayed": "This step is delayed. Our team has been notified and will take care of it.",
    "skipped": "Not needed any more.",
}


def job_key(order_id: int, step: str) -> str:
    return f"order:{order_id}:{step}"


def webhook_key(endpoint_id: int, event: str, order_id: int, message_id: int | None = None) -> str:
    key = f"webhook:{endpoint_id}:{event}:order:{order_id}"
    return key if message_id is None else f"{key}:{message_id}"


def on_order_paid(order: Order) -> None:
    """Enqueue the pipeline; called inside the transaction that marks the order paid, so the jobs exist
    if and only if the order is paid.

    send_order_confirmation (high priority) releases generate_invoice and sync_inventory when it
    succeeds; mark_order_fulfilled waits for both. The follow-up email waits FOLLOWUP_DELAY seconds.
    """
    ref = {"order_id": order.id}
    invoice = prepare("generate_invoice", ref, unique_key=job_key(order.id, "invoice"))
    inventory = prepare("sync_inventory", ref, unique_key=job_key(order.id, "inventory"))
    enqueue(
        "send_order_confirmation",
        ref,
        priority=HIGH,
        unique_key=job_key(order.id, "confirmation"),
        then=[invoice, inventory],
    )
    if invoice.pk is not None:  # else the pipeline was enqueued before and is still running
        enqueue(
            "mark_order_fulfilled",
            ref,
            depends_on=[invoice, inventory],
            unique_key=job_key(order.id, "fulfilled"),
        )
    enqueue(
        "send_followup_email",
        ref,
        delay=timedelta(seconds=settings.FOLLOWUP_DELAY),
        unique_key=job_key(order.id, "followup"),
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
        )
        for endpoint in endpoints
    ]


# -- progress, for the order page and the API --------------------------------------------------------


def _job_state(job: Job | None) -> str:
    if job is None:
        return "waiting"
    if job.status in (JobStatus.DEAD, JobStatus.CANCELLED):
        return "delayed"
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING) and job.errors:
        return "retrying"
    return {JobStatus.BLOCKED: "waiting", JobStatus.RUNNING: "running"}.get(job.status, "pending")


def pipeline_steps(order: Order) -> list[dict[str, Any]]:
    """The state of each customer-visible step: done, waiting, pending, running, retrying (a failed
    attempt, another one is scheduled), delayed (gave up; staff must act) or skipped (order cancelled
    or refunded). Empty until the order is paid. Never carries error text."""
    if order.paid_at is None:
        return []
    done: dict[str, dict[str, Any]] = {}
    email = OrderEmail.objects.filter(order=order, kind=OrderEmail.Kind.CONFIRMATION).first()
    if email is not None:
        done["confirmation"] = {"at": email.sent_at}
    invoice = Invoice.objects.filter(order=order).first()
    if invoice is not None:
        done["invoice"] = {"at": invoice.created_at, "download_url": invoice.get_absolute_url()}
    sync = InventorySync.objects.filter(order=order).first()
    if sync is not None:
        done["inventory"] = {"at": sync.synced_at}
    if order.status == Order.Status.FULFILLED:
        done["fulfilled"] = {"at": order.updated_at}

    keys = {job_key(order.id, step): step for step, _ in STEPS}
    latest: dict[str, Job] = {}
    jobs = Job.objects.filter(unique_key__in=keys).only("id", "status", "errors", "unique_key")
    for job in jobs.order_by("id"):
        latest[keys[job.unique_key]] = job
    closed = order.status in (Order.Status.CANCELLED, Order.Status.REFUNDED)

    steps = []
    for step, label in STEPS:
        if step in done:
            extra = done[step]
            entry = {
                "step": step,
                "label": label,
                "state": "done",
                "message": "",
                "at": extra["at"].isoformat(),
            }
            if "download_url" in extra:
                entry["download_url"] = extra["download_url"]
        else:
            state = "skipped" if closed else _job_state(latest.get(step))
            entry = {"step": step, "label": label, "state": state, "message": MESSAGES[state], "at": None}
        entry["state_label"] = STATE_LABELS[entry["state"]]
        steps.append(entry)
    return steps
