"""Whatever a client sends to POST /api/orders, a malformed body gets a 4xx with a JSON error, never a
500, and changes nothing: no stock moves, no order, no job."""

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from jobs.models import Job
from orders.models import IdempotencyKey, Order
from shop.models import Product
from tests.badinput.strategies import FUZZ, broken_bodies, encoded, json_values, text, valid_body
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def catalog():
    ProductFactory(sku="A", price="19.90", stock=5)
    ProductFactory(sku="B", price="5.00", stock=3)


def post(body: bytes, content_type: str = "application/json", **headers):
    return Client().post("/api/orders", body, content_type=content_type, headers=headers)


def assert_refused_without_effect(response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert isinstance(data["error"], str) and isinstance(data["message"], str)
    assert dict(Product.objects.values_list("sku", "stock")) == {"A": 5, "B": 3}
    assert not Order.objects.exists()
    assert not Job.objects.exists()


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_are_refused_with_a_json_4xx(body):
    assert_refused_without_effect(post(body))


@FUZZ
@given(json_values)
def test_any_json_that_is_not_an_order_is_refused_with_a_json_4xx(value):
    assert_refused_without_effect(post(encoded(value)))


@FUZZ
@given(broken_bodies())
def test_a_valid_body_broken_in_one_place_is_refused_with_a_json_4xx(body):
    assert_refused_without_effect(post(encoded(body)))


@FUZZ
@given(st.integers(min_value=6, max_value=100))
def test_more_than_the_stock_is_409_and_reserves_nothing(quantity):
    body = valid_body()
    body["lines"][0]["quantity"] = quantity
    response = post(encoded(body))
    assert response.status_code == 409 and response.json()["error"] == "out_of_stock"
    assert_refused_without_effect(response)


@FUZZ
@given(broken_bodies(), text.filter(lambda k: 1 <= len(k) <= 255 and k.isprintable() and k.isascii()))
def test_an_idempotency_key_does_not_make_a_bad_body_succeed_on_replay(body, key):
    IdempotencyKey.objects.all().delete()
    first = post(encoded(body), **{"Idempotency-Key": key})
    assert_refused_without_effect(first)
    again = post(encoded(body), **{"Idempotency-Key": key})
    assert again.status_code == first.status_code and again.json() == first.json()
    assert_refused_without_effect(again)


@FUZZ
@given(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]))
def test_other_content_types_carrying_junk_are_refused(content_type):
    assert_refused_without_effect(post(b"email=a&name=b", content_type=content_type))


def test_a_declined_card_is_402_and_leaves_stock_and_jobs_alone():
    body = valid_body()
    body["payment_token"] = "tok_someone_elses_card"
    response = post(encoded(body))
    assert response.status_code == 402 and response.json()["error"] == "payment_declined"
    assert Product.objects.get(sku="A").stock == 5
    assert Order.objects.get().status == Order.Status.PAYMENT_FAILED
    assert not Job.objects.exists()


def test_body_over_one_megabyte_is_413_even_when_valid_json():
    body = valid_body()
    body["name"] = "x" * (1024 * 1024)
    response = post(encoded(body))
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert_refused_without_effect(response)


def test_a_lying_content_length_over_one_megabyte_is_413_before_reading():
    response = Client().generic(
        "POST", "/api/orders", b"{}", content_type="application/json", CONTENT_LENGTH=str(2 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert_refused_without_effect(response)


@FUZZ
@given(
    st.sampled_from(["email", "name", "payment_token", "line1", "city", "postal_code", "sku", "extra key"]),
    text,
    text,
)
def test_a_nul_character_anywhere_is_refused_before_it_reaches_the_database(field, before, after):
    body = valid_body()
    nul = f"{before}\x00{after}"
    if field in body:
        body[field] = nul
    elif field in body["shipping_address"]:
        body["shipping_address"][field] = nul
    elif field == "sku":
        body["lines"][0]["sku"] = nul
    else:
        body[nul] = 1
    response = post(encoded(body), **{"Idempotency-Key": f"nul-{field}"})
    IdempotencyKey.objects.all().delete()
    assert_refused_without_effect(response)


def test_json_nested_too_deep_to_parse_is_400_not_500():
    response = post(b"[" * 200_000 + b"]" * 200_000)
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    assert_refused_without_effect(response)
