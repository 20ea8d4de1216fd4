"""Orders are reached only by their unguessable token: no list, no enumeration by number or id, and an
order's page and API show that order's customer only. Job payloads never reach customers."""

import base64
import json

import pytest
from django.test import Client
from django.urls import NoReverseMatch, reverse

from orders.models import Order, new_order_token
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

ADDRESS = {"line1": "1 Analytical Street", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def place(client: Client, email: str, name: str, line1: str) -> dict:
    body = {
        "email": email,
        "name": name,
        "shipping_address": {**ADDRESS, "line1": line1},
        "lines": [{"sku": "A", "quantity": 1}],
        "payment_token": "tok_visa",
    }
    response = client.post("/api/orders", json.dumps(body), content_type="application/json")
    assert response.status_code == 201
    return response.json()


@pytest.fixture
def two_customers(client):
    ProductFactory(sku="A", stock=10)
    ada = place(client, "ada@example.com", "Ada Lovelace", "12 Analytical Street")
    bob = place(client, "bob@example.org", "Bob Babbage", "99 Difference Lane")
    return ada, bob


def test_order_tokens_carry_at_least_128_random_bits():
    tokens = {new_order_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) * 8 >= 128


def test_each_order_gets_its_own_token_of_at_least_128_bits(two_customers):
    ada, bob = two_customers
    assert ada["token"] != bob["token"]
    for order in Order.objects.all():
        assert len(order.token) >= 22  # 128 bits in URL-safe base64
        assert order.number not in order.token and str(order.pk) != order.token


@pytest.mark.parametrize(
    "url", ["/api/orders", "/api/orders/", "/orders/", "/api/orders?email=ada@example.com"]
)
def test_there_is_no_list_of_orders(client, two_customers, url):
    response = client.get(url)
    assert response.status_code in (404, 405)
    assert b"ada@example.com" not in response.content and b"bob@example.org" not in response.content


def test_orders_are_not_found_by_number_id_or_a_token_prefix(client, two_customers):
    ada, _ = two_customers
    order = Order.objects.get(token=ada["token"])
    for guess in (order.number, str(order.pk), ada["token"][:-1], ada["token"][:16], ada["token"].upper()):
        if guess == ada["token"]:
            continue
        assert client.get(f"/api/orders/{guess}").status_code == 404
        assert client.get(f"/orders/{guess}/").status_code == 404
        assert client.get(f"/orders/{guess}/invoice.pdf").status_code == 404


def test_the_order_api_shows_only_that_customers_data(client, two_customers):
    ada, bob = two_customers
    body = client.get(f"/api/orders/{ada['token']}").content.decode()
    assert "ada@example.com" in body and "12 Analytical Street" in body
    for other in ("bob@example.org", "Bob Babbage", "99 Difference Lane", bob["token"], bob["number"]):
        assert other not in body


def test_the_order_page_shows_only_that_customers_data(client, two_customers):
    ada, bob = two_customers
    body = client.get(f"/orders/{ada['token']}/").content.decode()
    assert "ada@example.com" in body
    for other in ("bob@example.org", "Bob Babbage", "99 Difference Lane", bob["token"], bob["number"]):
        assert other not in body


def test_the_order_page_and_api_never_show_job_payloads_or_errors(client, two_customers):
    from jobs.models import Job

    ada, _ = two_customers
    Job.objects.update(
        errors=[{"exception": "X", "message": "smtp password=hunter2", "traceback": "tb-secret"}]
    )
    for url in (f"/orders/{ada['token']}/", f"/api/orders/{ada['token']}"):
        body = client.get(url).content.decode()
        assert "hunter2" not in body and "tb-secret" not in body and '"payload"' not in body
        for job in Job.objects.all():
            assert json.dumps(job.payload) not in body or job.payload == {}


def test_the_storefront_has_no_named_order_list_route():
    for name in ("order-list", "orders", "api-order-list"):
        with pytest.raises(NoReverseMatch):
            reverse(name)
