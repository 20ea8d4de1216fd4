"""The warehouse's shipping callback (``POST /webhooks/warehouse``), received once and applied by a job.

The warehouse signs the raw body with ``WAREHOUSE_SECRET`` like our outgoing webhooks
(``X-Shop-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, five minutes' tolerance).
Each callback says where one of its shipments (by the warehouse's own id) stands: created, shipped or
delivered. ``receive`` checks it and stores it once, keyed by that id and status, with its
``apply_warehouse_event`` job in the same transaction; a repeat is acknowledged and changes nothing.
``apply_event`` goes through ``orders.services`` (shipments are checked again there, under the order's
row lock), so callbacks repeated or racing staff converge on one shipment.
"""

import json
from dataclasses import dataclass
from typing import Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError

from jobs.api import PermanentError, enqueue
from orders import services
from orders.events import Actor
from orders.models import Order, Shipment, WarehouseEvent
from orders.pipeline import order_tags
from orders.webhooks import verify_signature

TOLERANCE = 300  # seconds: a captured callback cannot be replayed later than this


class WarehouseError(Exception):
    """A callback refused: ``status`` and ``code`` for the JSON answer, the message for the warehouse."""

    def __init__(self, status: int, code: str, message: str, **extra) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


class ShippedLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=services.MAX_QUANTITY)


class ShipmentReport(BaseModel):
    """The callback's body."""

    model_config = ConfigDict(extra="ignore")

    shipment_id: str = Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")
    order: str = Field(min_length=1, max_length=32, description="The order number.")
    status: Literal["created", "shipped", "delivered"]
    lines: list[ShippedLine] = Field(default_factory=list, max_length=services.MAX_LINES)
    carrier: str = Field(default="", max_length=100)
    tracking_number: str = Field(default="", max_length=100)
    tracking_url: HttpUrl | None = None

    def items(self) -> dict[str, int]:
        items: dict[str, int] = {}
        for line in self.lines:
            items[line.sku] = items.get(line.sku, 0) + line.quantity
        return items


@dataclass(frozen=True)
class Received:
    event: WarehouseEvent
    duplicate: bool


def receive(body: bytes, signature: str) -> Received:
    """Verify the raw body, check the report, store it once and enqueue its job. Raises WarehouseError
    (nothing stored)."""
    if not settings.WAREHOUSE_SECRET:
        raise WarehouseError(503, "not_configured", "WAREHOUSE_SECRET is not set; callbacks are refused.")
    if not verify_signature(signature, body, settings.WAREHOUSE_SECRET, tolerance=TOLERANCE):
        raise WarehouseError(
            400, "invalid_signature", "The signature is missing, wrong, or older than five minutes."
        )
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WarehouseError(400, "invalid_json", "The body is not valid JSON.") from None
    try:
        report = ShipmentReport.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for err in exc.errors():
            fields.setdefault(".".join(str(p) for p in err["loc"]) or "body", []).append(err["msg"])
        raise WarehouseError(400, "invalid_request", "The report is invalid.", fields=fields) from None
    event_id = f"{report.shipment_id}:{report.status}"
    stored = WarehouseEvent.objects.filter(event_id=event_id).first()
    if stored is not None:
        return Received(stored, duplicate=True)
    _check(report)
    try:
        with transaction.atomic():
            stored = WarehouseEvent.objects.create(
                event_id=event_id, type=f"shipment.{report.status}", payload=report.model_dump(mode="json")
            )
            enqueue(
                "apply_warehouse_event",
                {"event_id": event_id},
                unique_key=f"warehouse-event:{event_id}",
                tags=order_tags(report.order),
            )
    except IntegrityError:
        return Received(WarehouseEvent.objects.get(event_id=event_id), duplicate=True)
    return Received(stored, duplicate=False)


def _check(report: ShipmentReport) -> None:
    """Refuse now what the job would refuse: an unknown order, lines it does not have, more than is left
    to ship. (The job checks again under the order's lock; this is for a clear answer.)"""
    order = Order.objects.filter(number=report.order).first()
    if order is None:
        raise WarehouseError(404, "unknown_order", f"No order {report.order}.")
    shipment = Shipment.objects.filter(warehouse_id=report.shipment_id).first()
    if shipment is not None:
        if shipment.order_id != order.pk:
            raise WarehouseError(
                409, "shipment_conflict", f"Shipment {report.shipment_id} belongs to another order."
            )
        return
    if not report.lines:
        raise WarehouseError(400, "invalid_request", "A new shipment needs its lines.", fields={"lines": []})
    if order.status not in services.SHIPPABLE:
        raise WarehouseError(
            409, "not_shippable", f"Order {order.number} is {order.get_status_display().lower()}."
        )
    left = services.unshipped(order)
    for sku, quantity in report.items().items():
        if sku not in left:
            raise WarehouseError(422, "unknown_line", f"Order {order.number} has no line {sku}.", sku=sku)
        if quantity > left[sku]:
            raise WarehouseError(
                422,
                "over_shipping",
                f"Only {left[sku]} of {sku} left to ship, {quantity} reported.",
                sku=sku,
                left=left[sku],
            )


def apply_event(event: WarehouseEvent, *, actor: Actor | str) -> str:
    """Apply a stored callback (idempotent); returns its outcome. A report the order refuses (it was
    cancelled meanwhile, staff shipped the lines) is marked refused and raises PermanentError, so staff
    find it in the dead letters with the raw report."""
    if event.outcome != WarehouseEvent.Outcome.PENDING:
        return event.outcome
    report = ShipmentReport.model_validate(event.payload)
    order = Order.objects.filter(number=report.order).first()
    try:
        if order is None:
            raise services.InvalidShipment(f"No order {report.order}.")
        shipment = Shipment.objects.filter(warehouse_id=report.shipment_id).first()
        tracking = {
            "carrier": report.carrier,
            "tracking_number": report.tracking_number,
            "tracking_url": str(report.tracking_url or ""),
        }
        if shipment is None:
            shipment = services.create_shipment(
                order,
                lines=report.items(),
                actor=actor,
                warehouse_id=report.shipment_id,
                shipped=report.status != "created",
                **tracking,
            )
        elif report.status == "shipped":
            services.mark_shipment_shipped(shipment, actor=actor, **tracking)
        if report.status == "delivered":
            services.mark_shipment_delivered(shipment, actor=actor)
    except services.InvalidShipment as exc:
        WarehouseEvent.objects.filter(pk=event.pk, outcome=WarehouseEvent.Outcome.PENDING).update(
            outcome=WarehouseEvent.Outcome.REFUSED, note=str(exc)[:255], applied_at=timezone.now()
        )
        raise PermanentError(str(exc)) from exc
    WarehouseEvent.objects.filter(pk=event.pk, outcome=WarehouseEvent.Outcome.PENDING).update(
        outcome=WarehouseEvent.Outcome.APPLIED, note=f"shipment {shipment.pk}", applied_at=timezone.now()
    )
    return WarehouseEvent.Outcome.APPLIED
