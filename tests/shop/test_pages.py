import pytest
from django.test import Client

from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def cart(client) -> dict:
    return client.session.get("cart", {})


def test_product_list_shows_active_products_only(client):
    ProductFactory(name="Enamel mug", price="12.90")
    ProductFactory(name="Retired hat", active=False)
    response = client.get("/")
    assert response.status_code == 200
    assert b"Enamel mug" in response.content and b"12.90" in response.content
    assert b"Retired hat" not in response.content
    assert b'name="viewport"' in response.content


def test_product_detail_shows_price_and_stock(client):
    product = ProductFactory(sku="MUG", name="Enamel mug", price="12.90", stock=7)
    response = client.get(f"/products/{product.sku}/")
    assert response.status_code == 200
    assert b"Enamel mug" in response.content and b"7 in stock" in response.content


def test_sold_out_product_has_no_add_to_cart_button(client):
    ProductFactory(sku="GONE", stock=0)
    response = client.get("/products/GONE/")
    assert b"Sold out" in response.content and b"Add to cart" not in response.content


def test_inactive_or_unknown_product_page_is_404(client):
    ProductFactory(sku="OLD", active=False)
    assert client.get("/products/OLD/").status_code == 404
    assert client.get("/products/NOPE/").status_code == 404


def test_add_to_cart_adds_up_quantities(client):
    ProductFactory(sku="A")
    response = client.post("/cart/add/A/", {"quantity": 2})
    assert response.status_code == 302 and response["Location"] == "/cart/"
    client.post("/cart/add/A/", {"quantity": 1})
    assert cart(client) == {"A": 3}


def test_add_to_cart_refuses_bad_quantity(client):
    ProductFactory(sku="A")
    response = client.post("/cart/add/A/", {"quantity": 0})
    assert response.status_code == 400
    assert cart(client) == {}


def test_add_inactive_product_to_cart_is_404(client):
    ProductFactory(sku="A", active=False)
    assert client.post("/cart/add/A/", {"quantity": 1}).status_code == 404


def test_cart_page_lists_lines_and_total(client):
    ProductFactory(sku="A", name="Mug", price="12.90")
    client.post("/cart/add/A/", {"quantity": 2})
    response = client.get("/cart/")
    assert b"Mug" in response.content and b"25.80" in response.content
    assert response.context["cart_count"] == 2


def test_change_quantity_in_cart(client):
    ProductFactory(sku="A")
    client.post("/cart/add/A/", {"quantity": 2})
    client.post("/cart/update/A/", {"quantity": 5})
    assert cart(client) == {"A": 5}


def test_quantity_zero_removes_the_line(client):
    ProductFactory(sku="A")
    client.post("/cart/add/A/", {"quantity": 2})
    client.post("/cart/update/A/", {"quantity": 0})
    assert cart(client) == {}


def test_bad_quantity_change_keeps_the_cart(client):
    ProductFactory(sku="A")
    client.post("/cart/add/A/", {"quantity": 2})
    response = client.post("/cart/update/A/", {"quantity": "lots"}, follow=True)
    assert cart(client) == {"A": 2}
    assert b"Quantity must be" in response.content


def test_remove_from_cart(client):
    ProductFactory(sku="A")
    ProductFactory(sku="B")
    client.post("/cart/add/A/", {"quantity": 1})
    client.post("/cart/add/B/", {"quantity": 1})
    client.post("/cart/remove/A/")
    assert cart(client) == {"B": 1}


def test_cart_drops_products_taken_off_sale(client):
    product = ProductFactory(sku="A")
    client.post("/cart/add/A/", {"quantity": 1})
    product.active = False
    product.save()
    response = client.get("/cart/")
    assert b"Your cart is empty" in response.content and cart(client) == {}


def test_cart_changes_need_post(client):
    ProductFactory(sku="A")
    assert client.get("/cart/add/A/").status_code == 405


def test_cart_forms_are_csrf_protected():
    ProductFactory(sku="A")
    response = Client(enforce_csrf_checks=True).post("/cart/add/A/", {"quantity": 1})
    assert response.status_code == 403


def test_stylesheet_is_served_by_staticfiles():
    from django.contrib.staticfiles import finders

    assert finders.find("shop/shop.css")
