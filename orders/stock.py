"""Taking an order's stock: the products' rows locked in SKU order, read with their stock, and the
quantities subtracted only if every line can be served. Called by ``orders.services`` inside the
transaction that creates the order.

Locks are taken in SKU order, so two orders sharing products cannot deadlock. A product's stock read
under its lock is its stock until the transaction ends, so the check and the subtraction agree; the
``product_stock_not_negative`` constraint is the last line of defence. On PostgreSQL lock, read and
subtraction are one statement (they were a SELECT and an UPDATE per line); SQLite's transactions
hold the write lock from their first statement (BEGIN IMMEDIATE), so there a SELECT and one UPDATE
for all the lines do the same.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from django.db import connection
from django.db.models import Case, F, Value, When

from shop.models import Product


@dataclass(frozen=True)
class Taken:
    """The locked products by SKU (their stock as it was before), and whether the quantities were
    subtracted (False: a product is missing, inactive, in another currency, or short)."""

    products: dict[str, Product]
    taken: bool


def take(items: Mapping[str, int], currency: str) -> Taken:
    """Lock the products of ``items`` (SKU to quantity) and subtract the quantities if every line can
    be served. Call inside a transaction."""
    if connection.vendor == "postgresql":
        return _take_postgres(items, currency)
    products = {p.sku: p for p in Product.objects.select_for_update().filter(sku__in=items).order_by("sku")}
    if not _servable(products, items, currency):
        return Taken(products, False)
    Product.objects.filter(pk__in=[p.pk for p in products.values()]).update(
        stock=Case(
            *(When(pk=products[sku].pk, then=F("stock") - Value(quantity)) for sku, quantity in items.items())
        )
    )
    return Taken(products, True)


def _servable(products: dict[str, Product], items: Mapping[str, int], currency: str) -> bool:
    return all(
        sku in products
        and products[sku].active
        and products[sku].currency == currency
        and products[sku].stock >= quantity
        for sku, quantity in items.items()
    )


# The locked rows are read in full (MATERIALIZED, and the ``servable`` count is an init plan of the
# UPDATE) before anything is updated, in SKU order; rows another order changed meanwhile are read as
# that order left them (FOR UPDATE waits for it, then reads the newest version).
_TAKE_SQL = """
WITH wanted AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS w(sku, quantity)),
locked AS MATERIALIZED (
    SELECT p.id, p.sku, p.name, p.price, p.currency, p.active, p.stock FROM shop_product p
    WHERE p.sku = ANY(%s::text[]) ORDER BY p.sku FOR UPDATE
),
servable AS (
    SELECT count(*) = %s AS every_line FROM locked l JOIN wanted w ON w.sku = l.sku
    WHERE l.active AND l.currency = %s AND l.stock >= w.quantity
),
taken AS (
    UPDATE shop_product p SET stock = p.stock - w.quantity FROM locked l JOIN wanted w ON w.sku = l.sku
    WHERE p.id = l.id AND (SELECT every_line FROM servable) RETURNING p.id
)
SELECT l.*, (SELECT count(*) FROM taken) AS taken FROM locked l ORDER BY l.sku
"""


def _take_postgres(items: Mapping[str, int], currency: str) -> Taken:
    skus = sorted(items)
    params = [skus, [items[sku] for sku in skus], skus, len(skus), currency]
    rows = list(Product.objects.raw(_TAKE_SQL, params))
    return Taken({p.sku: p for p in rows}, bool(rows) and rows[0].taken == len(skus))
