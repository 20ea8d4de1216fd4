"""The session cart: SKU -> quantity in the session, products looked up when shown."""

from dataclasses import dataclass
from decimal import Decimal

from django.http import HttpRequest

from shop.models import Product

SESSION_KEY = "cart"
MAX_QUANTITY = 100  # of one product in a cart line or an order line (orders.services checks it too)


@dataclass(frozen=True)
class CartLine:
    product: Product
    quantity: int

    @property
    def line_total(self) -> Decimal:
        return self.product.price * self.quantity


class Cart:
    def __init__(self, request: HttpRequest) -> None:
        self.session = request.session
        raw = self.session.get(SESSION_KEY) or {}
        self.items: dict[str, int] = {str(k): int(v) for k, v in raw.items() if int(v) > 0}

    def add(self, sku: str, quantity: int = 1) -> None:
        self.set(sku, self.items.get(sku, 0) + quantity)

    def set(self, sku: str, quantity: int) -> None:
        if quantity <= 0:
            self.items.pop(sku, None)
        else:
            self.items[sku] = min(quantity, MAX_QUANTITY)
        self._save()

    def remove(self, sku: str) -> None:
        self.set(sku, 0)

    def clear(self) -> None:
        self.items = {}
        self._save()

    def lines(self) -> list[CartLine]:
        """Lines for products still on sale; products that vanished from the catalog are dropped."""
        products = Product.objects.active().filter(sku__in=self.items).order_by("name")
        lines = [CartLine(p, self.items[p.sku]) for p in products]
        if len(lines) != len(self.items):
            self.items = {line.product.sku: line.quantity for line in lines}
            self._save()
        return lines

    def count(self) -> int:
        return sum(self.items.values())

    def __len__(self) -> int:
        return len(self.items)

    def _save(self) -> None:
        self.session[SESSION_KEY] = self.items
        self.session.modified = True


def cart_total(lines: list[CartLine]) -> Decimal:
    return sum((line.line_total for line in lines), Decimal("0.00"))
