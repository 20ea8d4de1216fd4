"""An order's history: who did what (``Actor``), how a change is recorded (``record``), and the
timeline as the customer sees it (``customer_timeline``).

``record`` is called by ``orders.services`` only, inside the transaction that makes the change: a
rollback leaves no event, and the guarded transition that makes a change happen once makes its event
happen once.
"""

from dataclasses import dataclass
from typing import Any

from orders.models import ActorKind, Order, OrderEvent, OrderEventKind

Kind = OrderEventKind

# Kinds the customer never sees: the shop's plumbing and staff's words.
STAFF_ONLY = {
    Kind.STOCK_RESERVED,
    Kind.STOCK_RELEASED,
    Kind.WEBHOOK_DELIVERED,
    Kind.WEBHOOK_REFUSED,
    Kind.STAFF_NOTE,
    Kind.DISPUTED,
    Kind.REFUND_FAILED,
}
# The facts a customer may see, by name; anything else (errors, URLs, staff reasons) stays inside.
CUSTOMER_FACTS = {
    "email",
    "invoice",
    "credit_note",
    "amount",
    "currency",
    "carrier",
    "tracking_number",
    "tracking_url",
    "lines",
    "step",
    "shipment",
    "status",
}


@dataclass(frozen=True)
class Actor:
    """Who made a change: a staff user, the customer, the system, or a job (by its id)."""

    kind: str
    user_id: int | None = None
    name: str = ""
    job_id: int | None = None

    @classmethod
    def staff(cls, user) -> "Actor":
        return cls(ActorKind.STAFF, user_id=user.pk, name=user.get_username())

    @classmethod
    def customer(cls) -> "Actor":
        return cls(ActorKind.CUSTOMER)

    @classmethod
    def system(cls) -> "Actor":
        return cls(ActorKind.SYSTEM)

    @classmethod
    def job(cls, ctx_or_id) -> "Actor":
        """The job running a handler: pass its ``ctx`` (or the job's id)."""
        job_id = ctx_or_id if isinstance(ctx_or_id, int) else ctx_or_id.job_id
        return cls(ActorKind.JOB, job_id=job_id)

    @classmethod
    def of(cls, value: "Actor | str | None") -> "Actor":
        """An Actor from an Actor or its string form ("staff:<name>", "customer", "system", "job:<id>")."""
        if isinstance(value, Actor):
            return value
        if not value or value == ActorKind.SYSTEM:
            return cls.system()
        kind, _, rest = str(value).partition(":")
        if kind == ActorKind.STAFF:
            return cls(ActorKind.STAFF, name=rest[:150])
        if kind == ActorKind.JOB and rest.isdigit():
            return cls.job(int(rest))
        if kind == ActorKind.CUSTOMER:
            return cls.customer()
        raise ValueError(f"unknown actor {value!r}")

    def __str__(self) -> str:
        if self.kind == ActorKind.STAFF:
            return f"staff:{self.name}"
        if self.kind == ActorKind.JOB:
            return f"job:{self.job_id}"
        return self.kind


SYSTEM = Actor.system()
CUSTOMER = Actor.customer()


def record(order: Order | int, kind: str, actor: Actor | str | None, **facts: Any) -> OrderEvent:
    """Write one event. Call inside the transaction that makes the change it records."""
    actor = Actor.of(actor)
    return OrderEvent.objects.create(
        order_id=order if isinstance(order, int) else order.pk,
        kind=kind,
        actor_kind=actor.kind,
        actor_user_id=actor.user_id,
        actor_name=actor.name,
        job_id=actor.job_id,
        public=kind not in STAFF_ONLY,
        facts=facts,
    )


def record_many(order: Order, actor: Actor | str | None, *events: tuple[str, dict[str, Any]]) -> None:
    """Write several events of one change, (kind, facts) each, in one INSERT; as ``record``, inside the
    transaction that makes the change."""
    actor = Actor.of(actor)
    OrderEvent.objects.bulk_create(
        OrderEvent(
            order_id=order.pk,
            kind=kind,
            actor_kind=actor.kind,
            actor_user_id=actor.user_id,
            actor_name=actor.name,
            job_id=actor.job_id,
            public=kind not in STAFF_ONLY,
            facts=facts,
        )
        for kind, facts in events
    )


def customer_view(event: OrderEvent) -> dict[str, Any]:
    """An event as the customer sees it: its label, when, who (customer, shop), and safe facts."""
    facts = {k: v for k, v in (event.facts or {}).items() if k in CUSTOMER_FACTS}
    return {
        "kind": event.kind,
        "label": _label(event),
        "at": event.created_at.isoformat(),
        "by": "you" if event.actor_kind == ActorKind.CUSTOMER else "shop",
        "facts": facts,
    }


def _label(event: OrderEvent) -> str:
    facts = event.facts or {}
    if event.kind == Kind.EMAIL_SENT:
        return f"Email sent: {facts.get('label', 'order update')}"
    if event.kind == Kind.STEP_FAILED:
        return "A step is delayed" if facts.get("final") else "A step is being retried"
    if event.kind in (Kind.SHIPMENT_SHIPPED, Kind.SHIPMENT_CREATED) and facts.get("carrier"):
        return f"{event.get_kind_display()} ({facts['carrier']})"
    return event.get_kind_display()


def customer_timeline(order: Order) -> list[OrderEvent]:
    """The order's public events, oldest first: one query on the ``orderevent_timeline`` index,
    whatever the number of jobs behind them. (Failed attempts are among them: the progress list shows
    them as "retrying" or "delayed"; ``shown_to_customer`` leaves them out of the timeline.)"""
    return list(OrderEvent.objects.filter(order=order, public=True).order_by("created_at", "id"))


def shown_to_customer(events: list[OrderEvent]) -> list[OrderEvent]:
    return [event for event in events if event.kind != Kind.STEP_FAILED]
