import pytest

from orders.services import ShippingAddress, place_order

ADDRESS = ShippingAddress(line1="1 Analytical Street", city="Berlin", postal_code="10115", country="DE")


@pytest.fixture
def place():
    """place_order with a valid customer, so a test names only what it is about."""

    def _place(items: dict[str, int], token: str = "tok_visa", **overrides):
        kwargs = dict(
            email="ada@example.com", name="Ada Lovelace", shipping_address=ADDRESS, actor="customer"
        )
        kwargs.update(overrides)
        return place_order(items=items, payment_token=token, **kwargs)

    return _place
