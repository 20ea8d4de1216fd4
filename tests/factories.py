from decimal import Decimal

import factory

from orders.models import Order, OrderLine, Payment
from shop.models import Product


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:04d}")
    name = factory.Sequence(lambda n: f"Product {n}")
    description = "A fine product."
    price = Decimal("19.90")
    stock = 10
    active = True


class OrderFactory(factory.django.DjangoModelFactory):
    """An order as stored, without touching stock or the gateway (use place_order for that)."""

    class Meta:
        model = Order

    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    name = "Ada Lovelace"
    shipping_line1 = "1 Analytical Street"
    shipping_city = "Berlin"
    shipping_postal_code = "10115"
    shipping_country = "DE"
    total = Decimal("0.00")


class OrderLineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrderLine

    order = factory.SubFactory(OrderFactory)
    product = factory.SubFactory(ProductFactory)
    sku = factory.SelfAttribute("product.sku")
    name = factory.SelfAttribute("product.name")
    quantity = 1
    unit_price = factory.SelfAttribute("product.price")


class PaymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Payment

    order = factory.SubFactory(OrderFactory)
    gateway = "fake"
    gateway_reference = factory.Sequence(lambda n: f"ch_test{n}")
    amount = factory.SelfAttribute("order.total")
    currency = "EUR"
    status = Payment.Status.SUCCEEDED
