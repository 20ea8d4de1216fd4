import json
import threading

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from orders.models import FakeGatewayCharge, IdempotencyKey, Order
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def body(**overrides) -> dict:
    data = {
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "shipping_address": {
            "line1": "1 Analytical Street",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
        "lines": [{"sku": "A", "quantity": 2}],
        "payment_token": "tok_visa",
    }
    data.update(overrides)
    return data


def post(client, data, **headers):
    payload = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return client.post("/api/orders", payload, content_type="application/json", headers=headers)


@pytest.fixture(autouse=True)
def product():
    return ProductFactory(sku="A", price="19.90", stock=5)


def test_created_order_is_returned_with_201(client):
    response = post(client, body())
    assert response.status_code == 201
    data = response.json()
    order = Order.objects.get()
    assert data["number"] == order.number and data["token"] == order.token
    assert data["status"] == "paid"
    assert data["total"] == "39.80" and data["currency"] == "EUR"
    assert data["lines"] == [
        {
            "sku": "A",
            "name": order.lines.get().name,
            "quantity": 2,
            "unit_price": "19.90",
            "line_total": "39.80",
        }
    ]
    assert data["status_url"].endswith(f"/api/orders/{order.token}")
    assert data["shipping_address"]["country"] == "DE"
    assert Product.objects.get(sku="A").stock == 3


def test_order_is_read_back_by_token(client):
    created = post(client, body()).json()
    response = client.get(f"/api/orders/{created['token']}")
    assert response.status_code == 200
    assert response.json() == created


def test_unknown_token_is_json_404(client):
    response = client.get("/api/orders/not-a-token")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"


def test_unknown_api_path_is_json_404(client):
    response = client.get("/api/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "method, path",
    [("get", "/api/orders"), ("put", "/api/orders"), ("delete", "/api/orders"), ("post", "/api/orders/x")],
)
def test_wrong_method_is_json_405(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert "Allow" in response


def test_malformed_json_is_400(client):
    response = post(client, '{"email": ')
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"


def test_missing_fields_are_reported_per_field(client):
    response = post(client, {"email": "ada@example.com"})
    assert response.status_code == 400
    fields = response.json()["fields"]
    assert {"name", "shipping_address", "lines", "payment_token"} <= set(fields)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"lines": [{"sku": "A", "quantity": 0}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "A", "quantity": 101}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "A", "quantity": "2"}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "A", "quantity": 1.5}]}, "lines.0.quantity"),
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": f"S{i}", "quantity": 1} for i in range(51)]}, "lines"),
        ({"lines": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]}, "lines"),
        ({"email": "not-an-email"}, "email"),
        ({"name": ""}, "name"),
        ({"payment_token": 42}, "payment_token"),
        (
            {"shipping_address": {"line1": "x", "city": "y", "postal_code": "1", "country": "Germany"}},
            "shipping_address.country",
        ),
        ({"shipping_address": {"line1": "x", "city": "y", "postal_code": "1"}}, "shipping_address.country"),
        ({"extra": "field"}, "extra"),
    ],
)
def test_invalid_body_is_400_naming_the_field(client, overrides, field):
    response = post(client, body(**overrides))
    assert response.status_code == 400
    assert field in response.json()["fields"], response.json()
    assert not Order.objects.exists()


def test_body_that_is_not_an_object_is_400(client):
    response = post(client, [1, 2])
    assert response.status_code == 400


@pytest.mark.parametrize("sku", ["NO-SUCH-SKU", "INACTIVE"])
def test_unknown_or_inactive_sku_is_400_naming_the_line(client, sku):
    ProductFactory(sku="INACTIVE", active=False)
    response = post(client, body(lines=[{"sku": "A", "quantity": 1}, {"sku": sku, "quantity": 1}]))
    assert response.status_code == 400
    assert response.json()["fields"] == {"lines.1.sku": ["Unknown or inactive SKU."]}
    assert Product.objects.get(sku="A").stock == 5 and not Order.objects.exists()


def test_short_stock_is_409_naming_the_sku(client):
    response = post(client, body(lines=[{"sku": "A", "quantity": 6}]))
    assert response.status_code == 409
    assert response.json()["sku"] == "A" and response.json()["available"] == 5
    assert not Order.objects.exists()


def test_declined_card_is_402_with_reason_and_releases_stock(client):
    response = post(client, body(payment_token="tok_chargeDeclined"))
    assert response.status_code == 402
    data = response.json()
    assert data["error"] == "payment_declined" and data["message"] == "Your card was declined."
    assert data["order"]["status"] == "payment_failed"
    assert data["order"]["payment"]["decline_reason"] == "Your card was declined."
    assert Product.objects.get(sku="A").stock == 5


def test_gateway_error_is_502(client):
    response = post(client, body(payment_token="tok_processing_error"))
    assert response.status_code == 502
    assert response.json()["error"] == "gateway_error"
    assert response.json()["order"]["status"] == "payment_failed"
    assert Product.objects.get(sku="A").stock == 5


def test_body_over_one_megabyte_is_413_before_parsing(client):
    response = post(client, b"{" + b" " * (1024 * 1024) + b"}")
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_api_is_csrf_exempt():
    response = post(Client(enforce_csrf_checks=True), body())
    assert response.status_code == 201


def test_idempotent_replay_returns_first_response_without_second_order_or_charge(client):
    first = post(client, body(), **{"Idempotency-Key": "key-1"})
    again = post(client, body(), **{"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1
    assert Product.objects.get(sku="A").stock == 3


def test_idempotent_replay_of_a_decline_replays_the_decline(client):
    first = post(client, body(payment_token="tok_chargeDeclined"), **{"Idempotency-Key": "key-1"})
    again = post(client, body(payment_token="tok_chargeDeclined"), **{"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 402
    assert again.json() == first.json() and Order.objects.count() == 1


def test_same_key_with_another_body_is_422(client):
    post(client, body(), **{"Idempotency-Key": "key-1"})
    response = post(client, body(name="Someone Else"), **{"Idempotency-Key": "key-1"})
    assert response.status_code == 422
    assert Order.objects.count() == 1


def test_same_key_with_same_json_formatted_differently_is_a_replay(client):
    first = post(client, body(), **{"Idempotency-Key": "key-1"})
    again = post(client, json.dumps(body(), indent=2, sort_keys=True), **{"Idempotency-Key": "key-1"})
    assert again.status_code == 201 and again.json() == first.json()


def test_key_of_a_request_still_running_is_409_in_progress_with_retry_after(client):
    first = post(client, body(), **{"Idempotency-Key": "key-1"})
    IdempotencyKey.objects.filter(key="key-1").update(
        recovery_point="charge_attempted", lease="another-request", locked_at=timezone.now()
    )
    response = post(client, body(), **{"Idempotency-Key": "key-1"})
    assert response.status_code == 409 and response.json()["error"] == "request_in_progress"
    assert int(response["Retry-After"]) >= 1
    assert first.status_code == 201 and Order.objects.count() == 1


def test_idempotency_key_is_stored_with_the_response(client):
    response = post(client, body(), **{"Idempotency-Key": "key-1"})
    record = IdempotencyKey.objects.get(key="key-1")
    assert record.response_status == 201 and record.response_body == response.json()
    assert len(record.fingerprint) == 64 and record.created_at and record.completed_at


def test_overlong_idempotency_key_is_400(client):
    response = post(client, body(), **{"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert not Order.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_the_same_key_charge_once():
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def request() -> None:
        try:
            barrier.wait()
            statuses.append(post(Client(), body(), **{"Idempotency-Key": "same"}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(set(statuses)) in ([201], [201, 409]), statuses
    assert statuses.count(201) >= 1
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1
    assert Product.objects.get(sku="A").stock == 3


def test_unexpected_error_is_json_500_and_a_retry_with_the_key_resumes(client, settings):
    settings.PAYMENT_GATEWAY = "orders.gateways.NoSuchGateway"
    response = post(client, body(), **{"Idempotency-Key": "key-1"})
    assert response.status_code == 500
    assert response.json() == {"error": "server_error", "message": "Internal server error."}
    record = IdempotencyKey.objects.get(key="key-1")
    assert record.recovery_point == "started" and record.lease == "" and record.locked_at is None
    assert not Order.objects.exists() and Product.objects.get(sku="A").stock == 5

    settings.PAYMENT_GATEWAY = "orders.gateways.FakeGateway"
    again = post(client, body(), **{"Idempotency-Key": "key-1"})
    assert again.status_code == 201
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1


def test_error_handlers_answer_json_under_api_and_html_elsewhere(rf):
    from orders.api import page_not_found, server_error

    assert page_not_found(rf.get("/api/x")).status_code == 404
    assert page_not_found(rf.get("/api/x"))["Content-Type"] == "application/json"
    assert server_error(rf.get("/api/x")).status_code == 500
    assert server_error(rf.get("/api/x"))["Content-Type"] == "application/json"
    assert page_not_found(rf.get("/nope"), None)["Content-Type"].startswith("text/html")
