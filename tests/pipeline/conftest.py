import pytest

from orders.services import ShippingAddress, place_order
from tests.factories import ProductFactory

ADDRESS = ShippingAddress(line1="1 Analytical Street", city="Berlin", postal_code="10115", country="DE")


@pytest.fixture
def product():
    return ProductFactory(sku="MUG", name="Coffee mug", price="11.90", stock=20)


@pytest.fixture
def place(product):
    """place_order with a valid customer: returns the order, paid (with tok_visa) and its jobs enqueued."""

    def _place(items: dict[str, int] | None = None, token: str = "tok_visa", **overrides):
        kwargs = dict(
            email="ada@example.com", name="Ada Lovelace", shipping_address=ADDRESS, actor="customer"
        )
        kwargs.update(overrides)
        return place_order(items=items or {product.sku: 2}, payment_token=token, **kwargs)

    return _place
