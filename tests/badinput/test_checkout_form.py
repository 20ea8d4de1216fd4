"""Whatever is posted to the checkout form, a bad submission is answered with the form and its errors
(a 4xx), never a 500, and changes nothing: no stock moves, no order, no job, the cart is kept."""

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from jobs.models import Job
from orders.gateways import FakeGateway
from orders.models import Order
from shop.models import Product
from tests.badinput.strategies import FUZZ, text
from tests.factories import ProductFactory
from tests.utils import checkout_token

pytestmark = pytest.mark.django_db

# Hypothesis also tries the string constants it finds in the code, such as the fake gateway's test cards.
ACCEPTED_TOKENS = {
    "tok_visa",
    "tok_mastercard",
    FakeGateway.ERROR_TOKEN,
    FakeGateway.THREE_D_SECURE_TOKEN,
    FakeGateway.PROCESSING_TOKEN,
}

FORM = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "line1": "1 Analytical Street",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "DE",
    "payment_token": "tok_visa",
}


@pytest.fixture(autouse=True)
def catalog():
    ProductFactory(sku="A", name="Enamel mug", price="12.90", stock=5)


def shopper() -> Client:
    client = Client()
    assert client.post("/cart/add/A/", {"quantity": 2}).status_code == 302
    return client


def assert_form_refused_without_effect(client: Client, response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("text/html")
    assert b"errorlist" in response.content
    assert Product.objects.get(sku="A").stock == 5
    assert not Order.objects.exclude(status=Order.Status.PAYMENT_FAILED).exists()
    assert not Job.objects.exists()
    assert client.session["cart"] == {"A": 2}


@st.composite
def broken_forms(draw) -> dict:
    """The valid form with one field missing, blank, too long, or of the wrong shape."""
    form = dict(FORM)
    field = draw(st.sampled_from(sorted(FORM)))
    how = draw(st.sampled_from(["missing", "blank", "too_long", "nul", "shape"]))
    if how == "missing":
        del form[field]
    elif how == "blank":
        form[field] = draw(st.sampled_from(["", "   "]))
    elif how == "too_long":
        form[field] = "x" * 201 + draw(text)
    elif how == "nul":
        form[field] = draw(text) + "\x00"
    elif field == "email":
        form[field] = draw(text.filter(lambda s: "@" not in s))
    elif field == "country":
        form[field] = draw(text.filter(lambda s: not (len(s) == 2 and s.isascii() and s.isalpha())))
    else:
        del form[field]
    return form


@FUZZ
@given(broken_forms())
def test_a_checkout_form_broken_in_one_field_shows_errors_and_changes_nothing(form):
    client = shopper()
    form = {**form, "checkout_token": checkout_token(client)}
    assert_form_refused_without_effect(client, client.post("/orders/", form))


@FUZZ
@given(st.dictionaries(text, st.lists(text, max_size=3) | text, max_size=8))
def test_any_form_fields_are_refused_with_form_errors(fields):
    client = shopper()
    assert_form_refused_without_effect(client, client.post("/orders/", fields))
    fields = {**fields, "checkout_token": checkout_token(client)}
    assert_form_refused_without_effect(client, client.post("/orders/", fields))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["application/x-www-form-urlencoded", "application/json"]))
def test_any_raw_body_is_refused_with_form_errors(body, content_type):
    client = shopper()
    assert_form_refused_without_effect(client, client.post("/orders/", body, content_type=content_type))


@FUZZ
@given(text.filter(lambda t: t.strip() not in ACCEPTED_TOKENS))
def test_an_unknown_payment_token_is_declined_on_the_form(token):
    client = shopper()
    response = client.post(
        "/orders/", {**FORM, "payment_token": token, "checkout_token": checkout_token(client)}
    )
    assert_form_refused_without_effect(client, response)


def test_an_empty_cart_is_a_form_error_and_creates_nothing():
    client = shopper()
    token = checkout_token(client)
    client.post("/cart/remove/A/")
    response = client.post("/orders/", {**FORM, "checkout_token": token})
    assert response.status_code == 400 and b"Your cart is empty." in response.content
    assert not Order.objects.exists() and not Job.objects.exists()


def test_a_checkout_body_over_one_megabyte_is_refused_before_parsing():
    client = shopper()
    response = client.post("/orders/", {**FORM, "name": "x" * (1024 * 1024)})
    assert response.status_code == 413
    assert Product.objects.get(sku="A").stock == 5 and not Order.objects.exists()
    assert not Job.objects.exists()


def test_a_checkout_file_upload_over_one_megabyte_is_refused_before_parsing(tmp_path):
    """File parts do not count towards DATA_UPLOAD_MAX_MEMORY_SIZE; the body size limit still holds."""
    client = shopper()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    with big.open("rb") as handle:
        response = client.post("/orders/", {**FORM, "attachment": handle})
    assert response.status_code == 413
    assert not Order.objects.exists() and not Job.objects.exists()
