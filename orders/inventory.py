"""Telling the warehouse the new stock levels of an order's products.

The body carries absolute stock levels, not deltas, so a repeated push is harmless; the
``InventorySync`` row written after the warehouse accepted it makes a repeated job send nothing.
"""

import json

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders import services
from orders.events import Actor
from orders.http import post_json
from orders.models import InventorySync, Order
from orders.webhooks import SIGNATURE_HEADER, sign


def stock_levels(order: Order) -> dict[str, int]:
    return {line.sku: line.product.stock for line in order.lines.select_related("product").order_by("sku")}


def sync_inventory(order: Order, *, actor: Actor | str) -> InventorySync:
    """Push the stock levels of the order's products to ``settings.WAREHOUSE_URL`` once (signed with
    ``WAREHOUSE_SECRET``); with no URL set, record the sync locally. Raises orders.http's
    TransientHTTPError (try again) or PermanentHTTPError (the warehouse refused it)."""
    existing = InventorySync.objects.filter(order=order).first()
    if existing is not None:
        return existing
    levels = stock_levels(order)
    url = settings.WAREHOUSE_URL
    status = None
    if url:
        body = json.dumps(
            {
                "id": f"inventory:{order.number}",
                "order": order.number,
                "stock": [{"sku": sku, "stock": stock} for sku, stock in levels.items()],
            },
            separators=(",", ":"),
        ).encode()
        headers = {SIGNATURE_HEADER: sign(body, settings.WAREHOUSE_SECRET)}
        status = post_json(url, body, headers=headers)
    try:
        with transaction.atomic():
            sync = InventorySync.objects.create(
                order=order,
                target=url or "local",
                response_status=status,
                stock_levels=levels,
                synced_at=timezone.now(),
            )
            services.record_inventory_synced(sync, actor=actor)
            return sync
    except IntegrityError:  # a concurrent run of the same job recorded it first
        return InventorySync.objects.get(order=order)
