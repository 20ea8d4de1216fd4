import pytest
from django.test import Client

from orders.models import Order
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

FORM = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "line1": "1 Analytical Street",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "de",
    "payment_token": "tok_visa",
}


@pytest.fixture
def client_with_cart(client):
    ProductFactory(sku="A", name="Enamel mug", price="12.90", stock=5)
    client.post("/cart/add/A/", {"quantity": 2})
    return client


def test_checkout_page_shows_cart_and_test_token_hint(client_with_cart):
    response = client_with_cart.get("/checkout/")
    assert response.status_code == 200
    assert b"25.80" in response.content
    assert b"tok_chargeDeclined" in response.content and b'value="tok_visa"' in response.content


def test_checkout_with_empty_cart_goes_back_to_cart(client):
    response = client.get("/checkout/")
    assert response.status_code == 302 and response["Location"] == "/cart/"


def test_successful_checkout_redirects_to_order_page_and_empties_cart(client_with_cart):
    response = client_with_cart.post("/orders/", FORM)
    order = Order.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/orders/{order.token}/"
    assert order.status == Order.Status.PAID and order.shipping_country == "DE"
    assert client_with_cart.session["cart"] == {}
    page = client_with_cart.get(response["Location"])
    assert b"Paid" in page.content and b"Enamel mug" in page.content and b"25.80" in page.content


def test_declined_card_shows_reason_and_keeps_cart(client_with_cart):
    response = client_with_cart.post("/orders/", {**FORM, "payment_token": "tok_insufficient_funds"})
    assert response.status_code == 402
    assert b"Payment declined: Your card has insufficient funds." in response.content
    assert client_with_cart.session["cart"] == {"A": 2}
    assert Product.objects.get(sku="A").stock == 5


def test_gateway_error_shows_a_message_and_keeps_cart(client_with_cart):
    response = client_with_cart.post("/orders/", {**FORM, "payment_token": "tok_processing_error"})
    assert response.status_code == 502
    assert b"payment service is unavailable" in response.content
    assert client_with_cart.session["cart"] == {"A": 2}


def test_form_errors_are_shown_and_nothing_is_ordered(client_with_cart):
    response = client_with_cart.post("/orders/", {**FORM, "email": "nope", "country": "Germany", "name": ""})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert {"email", "country", "name"} <= set(errors)
    assert not Order.objects.exists()


def test_short_stock_is_shown_on_the_form(client_with_cart):
    Product.objects.filter(sku="A").update(stock=1)
    response = client_with_cart.post("/orders/", FORM)
    assert response.status_code == 409
    assert b"Only 1 of A in stock" in response.content
    assert client_with_cart.session["cart"] == {"A": 2}


def test_empty_cart_cannot_be_ordered(client):
    response = client.post("/orders/", FORM)
    assert response.status_code == 400 and b"Your cart is empty." in response.content
    assert not Order.objects.exists()


def test_checkout_form_is_csrf_protected():
    ProductFactory(sku="A")
    client = Client(enforce_csrf_checks=True)
    client.post("/cart/add/A/", {"quantity": 1})  # refused too, so the cart stays empty
    response = client.post("/orders/", FORM)
    assert response.status_code == 403
    assert not Order.objects.exists()


def test_unknown_order_page_is_404(client):
    assert client.get("/orders/not-a-token/").status_code == 404


def test_order_page_shows_a_failed_status(client_with_cart):
    client_with_cart.post("/orders/", {**FORM, "payment_token": "tok_chargeDeclined"})
    order = Order.objects.get()
    assert b"Payment failed" in client_with_cart.get(order.get_absolute_url()).content
