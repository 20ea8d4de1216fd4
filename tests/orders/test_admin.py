import pytest

from jobs.testing import run_jobs
from orders.models import Order
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_product_admin_lists_and_edits_products(admin_client):
    product = ProductFactory(sku="A", name="Mug")
    assert b"Mug" in admin_client.get("/admin/shop/product/").content
    assert admin_client.get(f"/admin/shop/product/{product.pk}/change/").status_code == 200


def test_order_admin_shows_lines_and_payments_read_only(admin_client, place):
    ProductFactory(sku="A", name="Mug")
    order = place({"A": 2})
    url = f"/admin/orders/order/{order.pk}/change/"
    response = admin_client.get(url)
    assert response.status_code == 200
    assert b"Mug" in response.content and b"pi_" in response.content
    form_fields = response.context["adminform"].form.fields
    assert not {"status", "total", "currency", "number", "token"} & set(form_fields)


def test_order_admin_refund_action_uses_the_service(admin_client, place):
    ProductFactory(sku="A", stock=5)
    order = place({"A": 2})
    admin_client.post(
        "/admin/orders/order/", {"action": "refund_orders", "_selected_action": [order.pk]}, follow=True
    )
    run_jobs()  # the refund's gateway call is a job
    order.refresh_from_db()
    assert order.status == Order.Status.REFUNDED and Product.objects.get(sku="A").stock == 5


def test_orders_cannot_be_added_in_admin(admin_client):
    assert admin_client.get("/admin/orders/order/add/").status_code == 403
