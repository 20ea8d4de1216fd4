import threading

import pytest
from django.db import connection

from orders.models import FakeGatewayCharge, Order
from orders.services import OutOfStock
from shop.models import Product
from tests.factories import ProductFactory

THREADS = 8


def race(target, n: int = THREADS) -> list:
    """Run `target` in n threads released at once; each thread closes its own connection."""
    barrier = threading.Barrier(n)
    results: list = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == n
    return results


@pytest.mark.django_db(transaction=True)
def test_customers_racing_for_the_last_unit_buy_it_once(place):
    ProductFactory(sku="LAST", stock=1)
    results = race(lambda: place({"LAST": 1}))
    orders = [r for r in results if isinstance(r, Order)]
    assert len(orders) == 1, results
    assert all(isinstance(r, OutOfStock) for r in results if r not in orders)
    assert orders[0].status == Order.Status.PAID
    assert Product.objects.get(sku="LAST").stock == 0
    assert Order.objects.count() == 1 and FakeGatewayCharge.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_orders_sharing_products_in_any_order_neither_deadlock_nor_oversell(place):
    ProductFactory(sku="A", stock=3)
    ProductFactory(sku="B", stock=3)
    counter = iter(range(THREADS))

    def buy():
        # Half the customers list B before A: locks are still taken in SKU order.
        items = {"A": 1, "B": 1} if next(counter) % 2 else {"B": 1, "A": 1}
        return place(items)

    results = race(buy)
    paid = [r for r in results if isinstance(r, Order)]
    assert len(paid) == 3, results
    assert all(isinstance(r, OutOfStock) for r in results if r not in paid)
    assert set(Product.objects.values_list("stock", flat=True)) == {0}
