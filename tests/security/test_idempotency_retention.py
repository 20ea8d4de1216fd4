"""An Idempotency-Key protects a retry for at least 24 hours, even after the purge job has run."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.api import enqueue
from jobs.testing import run_jobs
from orders.models import FakeGatewayCharge, IdempotencyKey, Order
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

BODY = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {
        "line1": "1 Analytical Street",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
    "lines": [{"sku": "A", "quantity": 1}],
    "payment_token": "tok_visa",
}


def post(client):
    return client.post(
        "/api/orders",
        json.dumps(BODY),
        content_type="application/json",
        headers={"Idempotency-Key": "retry-me"},
    )


def test_a_retry_23_hours_later_after_the_purge_replays_and_charges_once(client):
    ProductFactory(sku="A", stock=5)
    first = post(client)
    assert first.status_code == 201
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))
    enqueue("purge_idempotency_keys", {})
    run_jobs()
    again = post(client)
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json()["number"] == first.json()["number"]
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1
