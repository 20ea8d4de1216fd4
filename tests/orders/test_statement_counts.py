"""What an order costs the database: statements and commits of placing one, and of reading it back.

Upper bounds, per database, so that a change that adds a round trip to the order path fails here
(speed itself is measured with bench/, never in tests). An order used to cost 33 statements and three
commits on PostgreSQL (38 with its POST); the pipeline's eleven statements and two savepoints are one
INSERT now, the stock is locked, read and taken in one statement, and nothing re-reads what its own
transaction just wrote.
"""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.models import Job, JobDependency
from orders.models import Order
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db(transaction=True)

# (PostgreSQL, SQLite): SQLite has no data-modifying WITH, so it takes two statements where
# PostgreSQL takes one for the stock and for the pipeline.
PLACE_ORDER = {"postgresql": 15, "sqlite": 17}
POST_ORDER = {"postgresql": 20, "sqlite": 22}  # the rate limit's upsert and the response's reads
GET_ORDER = {"postgresql": 5, "sqlite": 5}


def bound(bounds: dict[str, int]) -> int:
    return bounds[connection.vendor]


def statements(ctx) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries]


@pytest.fixture(autouse=True)
def catalog():
    for sku in ("A", "B", "C"):
        ProductFactory(sku=sku, price="12.90", stock=50)


@pytest.mark.parametrize("lines", [{"A": 1}, {"A": 2, "B": 1, "C": 3}], ids=["one line", "three lines"])
def test_placing_an_order_takes_a_bounded_number_of_statements_whatever_its_lines(place, lines):
    with CaptureQueriesContext(connection) as ctx:
        order = place(lines)
    assert order.status == Order.Status.PAID
    assert len(ctx.captured_queries) <= bound(PLACE_ORDER), "\n".join(statements(ctx))
    # ... and does what it did before: stock taken, the pipeline stored with its dependencies.
    assert {p.sku: p.stock for p in Product.objects.all()} == {s: 50 - lines.get(s, 0) for s in "ABC"}
    assert Job.objects.filter(unique_key__startswith=f"order:{order.id}:").count() == 4
    assert JobDependency.objects.count() == 4


def test_an_order_commits_twice_and_holds_no_transaction_across_the_gateway_call(place):
    """Reserve (stock, order, lines, events) in one transaction; payment, status and pipeline in the
    other; the gateway's charge between them, outside both."""
    with CaptureQueriesContext(connection) as ctx:
        place({"A": 1})
    sql = statements(ctx)
    assert sql.count("COMMIT") == 2 and not any(s.startswith("SAVEPOINT") for s in sql), "\n".join(sql)
    charge = next(i for i, s in enumerate(sql) if "orders_fakegatewaycharge" in s)
    first_commit = sql.index("COMMIT")
    assert first_commit < charge < first_commit + 1 + sql[first_commit + 1 :].index("COMMIT")
    assert not any(s.startswith("BEGIN") for s in sql[first_commit + 1 : charge])


def post_order(client, sku: str = "A"):
    body = {
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "lines": [{"sku": sku, "quantity": 1}],
        "payment_token": "tok_visa",
    }
    return client.post("/api/orders", json.dumps(body), content_type="application/json")


def test_posting_an_order_takes_a_bounded_number_of_statements(client):
    post_order(client, "B")  # the rate limit's window exists from the first request of a minute on
    with CaptureQueriesContext(connection) as ctx:
        response = post_order(client)
    assert response.status_code == 201, response.content
    assert len(ctx.captured_queries) <= bound(POST_ORDER), "\n".join(statements(ctx))


def test_reading_an_order_takes_a_bounded_number_of_statements(client, place):
    order = place({"A": 1, "B": 2})
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(f"/api/orders/{order.token}")
    assert response.status_code == 200 and response.json()["number"] == order.number
    assert len(response.json()["pipeline"]) == 4 and len(response.json()["lines"]) == 2
    assert len(ctx.captured_queries) <= bound(GET_ORDER), "\n".join(statements(ctx))
