"""sync_inventory against a real local HTTP server that fails on purpose."""

import pytest

from jobs.api import enqueue
from jobs.models import DeadLetter, Job, JobStatus
from jobs.testing import run_jobs
from orders.models import InventorySync, Order
from orders.webhooks import verify_signature
from tests.pipeline.servers import HANG
from tests.utils import wait_for

pytestmark = pytest.mark.django_db

SECRET = "warehouse-secret"


@pytest.fixture
def warehouse(http_server, settings):
    def start(script=(), default=200):
        server = http_server(script, default=default, secret=SECRET)
        settings.WAREHOUSE_URL = server.url + "stock"
        settings.WAREHOUSE_SECRET = SECRET
        return server

    return start


def sync_job(order: Order) -> Job:
    return Job.objects.get(unique_key=f"order:{order.id}:inventory")


def run_until(condition, message: str):
    """Run due jobs until ``condition()`` holds (retries become due after a short backoff)."""
    return wait_for(lambda: run_jobs() >= 0 and condition(), message=message)


def test_new_stock_levels_are_pushed_signed_to_the_warehouse(place, product, warehouse):
    server = warehouse()
    order = place({"MUG": 3})
    run_jobs()
    (request,) = server.accepted
    assert request.path == "/stock"
    assert request.json == {
        "id": f"inventory:{order.number}",
        "order": order.number,
        "stock": [{"sku": "MUG", "stock": 17}],
    }
    assert verify_signature(request.headers["X-Shop-Signature"], request.body, SECRET)
    sync = InventorySync.objects.get(order=order)
    assert (sync.target, sync.response_status, sync.stock_levels) == (server.url + "stock", 200, {"MUG": 17})


def test_server_errors_are_retried_until_the_warehouse_accepts(place, warehouse):
    server = warehouse(script=[500, 503, 502])
    order = place()
    run_until(lambda: InventorySync.objects.filter(order=order).exists(), "sync after three 5xx")
    job = sync_job(order)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 4
    assert [e["message"] for e in job.errors][0].endswith("HTTP 500 Internal Server Error")
    assert len(server.received) == 4 and len(server.accepted) == 1
    run_until(lambda: Order.objects.get(pk=order.pk).status == "fulfilled", "fulfilled")


def test_a_timeout_is_retried(place, warehouse, settings):
    settings.HTTP_TIMEOUT = 0.3
    server = warehouse(script=[HANG])
    order = place()
    run_until(lambda: InventorySync.objects.filter(order=order).exists(), "sync after a timeout")
    job = sync_job(order)
    assert job.attempts == 2 and "timed out" in job.errors[0]["message"]
    assert server.hung == 1 and len(server.accepted) == 1


def test_a_client_error_is_permanent_and_goes_to_the_dead_letters(place, warehouse):
    server = warehouse(default=422)
    order = place()
    run_jobs()
    job = sync_job(order)
    assert job.status == JobStatus.DEAD and job.attempts == 1
    dead = DeadLetter.objects.get(job=job)
    assert dead.error_class == "jobs.exceptions.PermanentError" and "HTTP 422" in dead.error_message
    assert len(server.received) == 1
    assert not InventorySync.objects.exists()
    fulfilment = Job.objects.get(unique_key=f"order:{order.id}:fulfilled")
    assert fulfilment.status == JobStatus.CANCELLED
    assert Order.objects.get(pk=order.pk).status == "paid"


def test_a_wrong_secret_is_refused_by_the_warehouse_as_permanent(place, warehouse, settings):
    server = warehouse()
    settings.WAREHOUSE_SECRET = "not-the-secret"
    order = place()
    run_jobs()
    assert sync_job(order).status == JobStatus.DEAD
    assert len(server.received) == 1 and not server.accepted


def test_without_a_warehouse_url_the_sync_is_recorded_locally(place, settings):
    settings.WAREHOUSE_URL = ""
    order = place()
    run_jobs()
    sync = InventorySync.objects.get(order=order)
    assert sync.target == "local" and sync.response_status is None and sync.stock_levels == {"MUG": 18}


def test_inventory_job_run_twice_pushes_once(place, warehouse):
    server = warehouse()
    order = place()
    run_jobs()
    again = enqueue("sync_inventory", {"order_id": order.id})
    run_jobs()
    assert Job.objects.get(id=again.id).status == JobStatus.SUCCEEDED
    assert len(server.received) == 1
    assert InventorySync.objects.filter(order=order).count() == 1
