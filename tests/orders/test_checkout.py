import re
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from orders.models import FakeGatewayCharge, IdempotencyKey, Order
from shop.models import Product
from tests.factories import ProductFactory
from tests.utils import checkout_token

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
    response = submit(client_with_cart, FORM)
    order = Order.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/orders/{order.token}/"
    assert order.status == Order.Status.PAID and order.shipping_country == "DE"
    assert client_with_cart.session["cart"] == {}
    page = client_with_cart.get(response["Location"])
    assert b"Paid" in page.content and b"Enamel mug" in page.content and b"25.80" in page.content


def test_declined_card_shows_reason_and_keeps_cart(client_with_cart):
    response = submit(client_with_cart, {**FORM, "payment_token": "tok_insufficient_funds"})
    assert response.status_code == 402
    assert b"Payment declined: Your card has insufficient funds." in response.content
    assert client_with_cart.session["cart"] == {"A": 2}
    assert Product.objects.get(sku="A").stock == 5


def test_gateway_error_shows_a_message_and_keeps_cart(client_with_cart):
    response = submit(client_with_cart, {**FORM, "payment_token": "tok_processing_error"})
    assert response.status_code == 502
    assert b"payment service is unavailable" in response.content
    assert client_with_cart.session["cart"] == {"A": 2}


def test_form_errors_are_shown_and_nothing_is_ordered(client_with_cart):
    response = submit(client_with_cart, {**FORM, "email": "nope", "country": "Germany", "name": ""})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert {"email", "country", "name"} <= set(errors)
    assert not Order.objects.exists()


def test_short_stock_is_shown_on_the_form(client_with_cart):
    Product.objects.filter(sku="A").update(stock=1)
    response = submit(client_with_cart, FORM)
    assert response.status_code == 409
    assert b"Only 1 of A in stock" in response.content
    assert client_with_cart.session["cart"] == {"A": 2}


def test_empty_cart_cannot_be_ordered(client_with_cart):
    token = checkout_token(client_with_cart)
    client_with_cart.post("/cart/remove/A/")  # in another tab
    response = client_with_cart.post("/orders/", {**FORM, "checkout_token": token})
    assert response.status_code == 400 and b"Your cart is empty." in response.content
    assert not Order.objects.exists()


def test_a_form_without_its_token_is_refused_and_shown_again_with_one(client_with_cart):
    for token in (None, "made-up"):
        form = FORM if token is None else {**FORM, "checkout_token": token}
        response = client_with_cart.post("/orders/", form)
        assert response.status_code == 400 and b"This checkout page has expired" in response.content
        assert b'name="checkout_token" value="' in response.content
    assert not Order.objects.exists() and Product.objects.get(sku="A").stock == 5


def test_checkout_form_is_csrf_protected():
    ProductFactory(sku="A")
    client = Client(enforce_csrf_checks=True)
    client.post("/cart/add/A/", {"quantity": 1})  # refused too, so the cart stays empty
    response = client.post("/orders/", FORM)
    assert response.status_code == 403
    assert not Order.objects.exists()


def test_unknown_order_page_is_404(client):
    assert client.get("/orders/not-a-token/").status_code == 404


def submit(client, form):
    return client.post("/orders/", {**form, "checkout_token": checkout_token(client)})


def test_order_page_shows_a_failed_status(client_with_cart):
    submit(client_with_cart, {**FORM, "payment_token": "tok_chargeDeclined"})
    order = Order.objects.get()
    assert b"Payment failed" in client_with_cart.get(order.get_absolute_url()).content


# -- the form's one-time token: one submission is at most one order and one charge --------------------


@pytest.mark.django_db(transaction=True)
def test_a_double_submit_places_one_order_and_both_answers_show_it(client_with_cart):
    token = checkout_token(client_with_cart)
    cookies = client_with_cart.cookies
    barrier = threading.Barrier(2)
    responses = []

    def submit_once() -> None:
        client = Client()
        client.cookies = cookies
        try:
            barrier.wait()
            responses.append(client.post("/orders/", {**FORM, "checkout_token": token}))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    order = Order.objects.get()
    assert [r.status_code for r in responses] == [302, 302]
    assert {r["Location"] for r in responses} == {f"/orders/{order.token}/"}
    assert order.status == Order.Status.PAID and FakeGatewayCharge.objects.count() == 1
    assert Product.objects.get(sku="A").stock == 3
    assert client_with_cart.session["cart"] == {}


def test_a_resubmitted_post_shows_the_same_order_without_a_second_charge(client_with_cart):
    form = {**FORM, "checkout_token": checkout_token(client_with_cart)}
    first = client_with_cart.post("/orders/", form)
    client_with_cart.post("/cart/add/A/", {"quantity": 1})  # the cart changed since: the token still wins
    again = client_with_cart.post("/orders/", form)
    assert first.status_code == again.status_code == 302 and again["Location"] == first["Location"]
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1


def test_a_declined_form_resubmitted_shows_the_decline_and_a_new_token_pays(client_with_cart):
    declined = {
        **FORM,
        "payment_token": "tok_chargeDeclined",
        "checkout_token": checkout_token(client_with_cart),
    }
    first = client_with_cart.post("/orders/", declined)
    again = client_with_cart.post("/orders/", declined)
    assert first.status_code == again.status_code == 402
    assert b"Payment declined: Your card was declined." in again.content
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.filter(succeeded=True).count() == 0
    new_token = re.search(rb'name="checkout_token" value="([^"]+)"', again.content)[1].decode()
    paid = client_with_cart.post("/orders/", {**FORM, "checkout_token": new_token})
    assert paid.status_code == 302
    assert Order.objects.filter(status=Order.Status.PAID).count() == 1
    assert Product.objects.get(sku="A").stock == 3


def test_a_submit_whose_request_died_is_resumed_by_the_resubmit(client_with_cart, settings):
    """The first request reserved the order and died before charging (its process was killed): after
    the lease, the browser's resubmit finds the order and charges it once."""
    from orders import idempotency
    from orders.services import _reserve
    from tests.orders.conftest import ADDRESS

    token = checkout_token(client_with_cart)
    lease = idempotency.take("checkout", token, "")
    _reserve(
        email="ada@example.com",
        name="Ada",
        shipping_address=ADDRESS,
        items={"A": 2},
        lease=lease,
        actor="customer",
    )
    IdempotencyKey.objects.update(
        locked_at=timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_LEASE + 1)
    )
    response = client_with_cart.post("/orders/", {**FORM, "checkout_token": token})
    order = Order.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/orders/{order.token}/"
    assert order.status == Order.Status.PAID and FakeGatewayCharge.objects.count() == 1
    assert Product.objects.get(sku="A").stock == 3
