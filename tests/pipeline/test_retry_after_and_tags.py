"""The pipeline's HTTP calls snooze for a receiver's Retry-After (429/503) instead of failing, and every
job of an order carries the tag ``order:<number>`` that staff find it by in the admin."""

import signal
from datetime import timedelta

import pytest

from jobs import db
from jobs.api import run_now
from jobs.models import Job, JobStatus
from jobs.testing import run_jobs
from orders.http import RETRY_AFTER_CAP, retry_after
from orders.models import InventorySync, Order, OrderEvent, OrderEventKind, WebhookDelivery, WebhookEndpoint
from tests.jobs.conftest import WorkerProcesses
from tests.utils import wait_for

SECRET = "retry-after-secret"


@pytest.fixture
def workers(tmp_path):
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


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


def test_retry_after_reads_seconds_and_http_dates_within_bounds():
    assert retry_after("120") == 120.0
    assert retry_after("0") == 1.0  # never a busy loop
    assert retry_after(str(10 * 86400)) == RETRY_AFTER_CAP
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0  # a date in the past: at once, nearly
    assert retry_after(None) is None and retry_after("soon") is None


@pytest.mark.django_db
def test_a_warehouse_429_with_retry_after_snoozes_the_sync_without_using_an_attempt(place, warehouse):
    server = warehouse(script=[(429, {"Retry-After": "120"})])
    order = place()
    before = db.now()
    run_jobs()
    job = sync_job(order)
    assert (job.status, job.attempts, job.snoozes, job.errors) == (JobStatus.PENDING, 0, 1, [])
    assert before + timedelta(seconds=119) < job.run_at <= db.now() + timedelta(seconds=120)
    # Asked to wait is not a failed step: the customer's page does not say "retrying".
    assert not OrderEvent.objects.filter(order=order, kind=OrderEventKind.STEP_FAILED).exists()
    run_now(job.id)
    run_jobs()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert len(server.received) == 2 and InventorySync.objects.filter(order=order).exists()


@pytest.mark.django_db
def test_a_503_without_retry_after_still_counts_as_a_failed_attempt(place, warehouse):
    warehouse(script=[503])
    order = place()
    run_jobs()
    job = sync_job(order)
    assert (job.status, job.attempts, job.snoozes) == (JobStatus.PENDING, 1, 0)
    assert job.errors[0]["message"].endswith("HTTP 503 Service Unavailable")


@pytest.mark.django_db
def test_a_webhook_endpoint_503_with_retry_after_snoozes_the_delivery(place, http_server):
    server = http_server([(503, {"Retry-After": "30"})], secret=SECRET)
    endpoint = WebhookEndpoint.objects.create(url=server.url + "hook", secret=SECRET, events=["order.paid"])
    order = place()
    run_jobs()
    job = Job.objects.get(unique_key=f"webhook:{endpoint.id}:order.paid:order:{order.id}")
    assert (job.status, job.attempts, job.snoozes, job.status_reason) == (
        JobStatus.PENDING,
        0,
        1,
        "snoozed for 30s",
    )
    run_now(job.id)
    run_jobs()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert WebhookDelivery.objects.get(order=order).response_status == 200


@pytest.mark.django_db(transaction=True)
def test_a_worker_snoozes_the_inventory_sync_for_the_warehouses_retry_after(place, warehouse, workers):
    server = warehouse(script=[(503, {"Retry-After": "1"})])
    order = place()
    proc = workers.start(
        "--concurrency", "2", env={"WAREHOUSE_URL": server.url + "stock", "WAREHOUSE_SECRET": SECRET}
    )
    wait_for(
        lambda: Order.objects.get(pk=order.pk).status == Order.Status.FULFILLED,
        timeout=60,
        message="the order is fulfilled after the warehouse's Retry-After",
    )
    job = sync_job(order)
    assert (job.status, job.attempts, job.snoozes, job.errors) == (JobStatus.SUCCEEDED, 1, 1, [])
    assert len(server.received) == 2 and len(server.accepted) == 1
    assert f"job {job.id} sync_inventory attempt 1: snoozed for 1s" in workers.output(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.mark.django_db
def test_every_job_of_an_order_is_tagged_with_its_number_and_the_admin_finds_them(
    place, http_server, admin_client
):
    server = http_server(secret=SECRET)
    WebhookEndpoint.objects.create(url=server.url + "hook", secret=SECRET, events=["order.paid"])
    order, other = place(), place()
    run_jobs()
    tag = f"order:{order.number}"
    mine = set(Job.objects.filter(payload__order_id=order.id).values_list("id", flat=True))
    assert {"send_order_confirmation", "generate_invoice", "sync_inventory", "mark_order_fulfilled"} <= set(
        Job.objects.filter(id__in=mine).values_list("type", flat=True)
    )
    assert all(tags == [tag] for tags in Job.objects.filter(id__in=mine).values_list("tags", flat=True))
    assert set(Job.objects.filter(db.tagged(tag)).values_list("id", flat=True)) == mine

    for query in ({"tag": tag}, {"q": tag}):
        response = admin_client.get("/admin/jobs/job/", query)
        assert response.status_code == 200
        listed = {job.id for job in response.context["cl"].result_list}
        assert listed == mine, query
    assert not mine & set(Job.objects.filter(db.tagged(f"order:{other.number}")).values_list("id", flat=True))

    page = admin_client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    assert f"/admin/jobs/job/?tag=order%3A{order.number}" in page
    job_page = admin_client.get(f"/admin/jobs/job/{min(mine)}/change/").content.decode()
    assert f"?tag=order%3A{order.number}" in job_page
