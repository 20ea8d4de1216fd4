"""The pipeline's calls out behind circuit breakers: a warehouse that is down stops being called after
PIPELINE_BREAKER_FAILURES failed syncs (the rest wait with their attempts), a probe after the cooldown
closes it; one merchant's failing webhook endpoint holds only its own deliveries; a 429 with Retry-After
never counts."""

from datetime import timedelta

import pytest
from django.conf import settings

from jobs import db
from jobs import explain as why
from jobs.api import explain
from jobs.models import BreakerState, Job, JobStatus
from jobs.testing import run_jobs
from orders.models import WebhookEndpoint
from tests.factories import ProductFactory
from tests.utils import wait_for

pytestmark = pytest.mark.django_db

SECRET = "breaker-secret"


@pytest.fixture
def product():
    return ProductFactory(sku="MUG", name="Coffee mug", price="11.90", stock=100)


@pytest.fixture
def warehouse(http_server, settings):
    def start(script=(), default=200):
        server = http_server(script, default=default, secret=SECRET)
        settings.WAREHOUSE_URL = server.url + "stock"
        settings.WAREHOUSE_SECRET = SECRET
        return server

    return start


def syncs():
    return Job.objects.filter(type="sync_inventory")


def end_cooldowns() -> None:
    BreakerState.objects.update(probe_at=db.now() - timedelta(seconds=1))


def test_a_warehouse_that_is_down_stops_being_called_until_a_probe_succeeds(place, warehouse):
    server = warehouse(default=500)
    threshold = settings.PIPELINE_BREAKER_FAILURES
    orders = [place() for _ in range(threshold + 3)]
    wait_for(
        lambda: run_jobs() >= 0 and BreakerState.objects.filter(type="sync_inventory", state="open").exists(),
        message="the warehouse's breaker opens",
    )
    calls = len(server.received)
    assert calls == sum(syncs().values_list("attempts", flat=True)) >= threshold
    run_jobs()
    assert len(server.received) == calls  # held: not one more call to the warehouse
    assert set(syncs().values_list("status", flat=True)) == {JobStatus.PENDING}
    # Each failed attempt counts, one process runs one at a time: the rest never ran.
    assert syncs().filter(attempts=0).count() >= len(orders) - threshold
    assert [r.code for r in explain(syncs().filter(attempts=0).first())][0] == why.BREAKER_OPEN

    server.default = 200  # the warehouse is back; the next probe finds it
    end_cooldowns()
    wait_for(
        lambda: run_jobs() >= 0 and set(syncs().values_list("status", flat=True)) == {JobStatus.SUCCEEDED},
        message="the probe closes the breaker and every sync runs",
    )
    assert BreakerState.objects.get(type="sync_inventory").state == "closed"
    assert syncs().count() == len(orders)


def test_a_failing_webhook_endpoint_holds_only_its_own_deliveries(place, http_server):
    down = http_server(default=500, secret=SECRET)
    up = http_server(secret=SECRET)
    bad = WebhookEndpoint.objects.create(url=down.url + "hook", secret=SECRET, events=["order.paid"])
    good = WebhookEndpoint.objects.create(url=up.url + "hook", secret=SECRET, events=["order.paid"])
    orders = [place() for _ in range(settings.PIPELINE_BREAKER_FAILURES + 2)]
    key = f"webhook-endpoint:{bad.pk}"
    wait_for(
        lambda: run_jobs() >= 0 and BreakerState.objects.filter(key=key, state="open").exists(),
        message="the failing endpoint's breaker opens",
    )
    run_jobs()
    deliveries = Job.objects.filter(type="deliver_webhook")
    assert set(deliveries.filter(payload__endpoint_id=good.pk).values_list("status", flat=True)) == {
        JobStatus.SUCCEEDED
    }
    assert len(up.accepted) == len(orders)
    held = deliveries.filter(payload__endpoint_id=bad.pk)
    assert set(held.values_list("status", flat=True)) == {JobStatus.PENDING}
    assert not BreakerState.objects.filter(type="deliver_webhook").exclude(key=key).exists()
    assert why.BREAKER_OPEN in [r.code for r in explain(held.first())]


def test_a_warehouse_asking_to_wait_with_retry_after_never_opens_the_breaker(place, warehouse):
    server = warehouse(script=[(429, {"Retry-After": "120"})] * 8)
    for _ in range(settings.PIPELINE_BREAKER_FAILURES + 2):
        place()
    run_jobs()
    assert len(server.received) >= settings.PIPELINE_BREAKER_FAILURES + 2
    assert set(syncs().values_list("snoozes", flat=True)) == {1}
    assert not BreakerState.objects.filter(type="sync_inventory").exists()
