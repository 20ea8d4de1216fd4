import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_database_rejects_negative_stock():
    product = ProductFactory(stock=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Product.objects.filter(pk=product.pk).update(stock=-1)
    product.refresh_from_db()
    assert product.stock == 1


def test_database_rejects_negative_price():
    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(price="-1.00")


def test_sku_is_unique():
    ProductFactory(sku="A")
    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(sku="A")


def test_price_currency_defaults_to_eur():
    assert ProductFactory().currency == "EUR"


def test_demo_catalog_loads_a_dozen_products_with_stock():
    call_command("load_demo_catalog")
    assert Product.objects.count() == 12
    assert all(p.stock > 0 and p.active for p in Product.objects.all())


def test_demo_catalog_is_idempotent_and_keeps_stock():
    call_command("load_demo_catalog")
    Product.objects.filter(sku="MUG-001").update(stock=1)
    call_command("load_demo_catalog")
    assert Product.objects.count() == 12
    assert Product.objects.get(sku="MUG-001").stock == 1
