"""Error reports: with SENTRY_DSN set, the SDK sends unhandled web errors and each job that ends in the
dead letters (once, not per retried attempt) to Sentry, tagged with the job and order, and never a
customer's email or payment token. A local server receives the envelopes."""

import signal

import pytest
from django.test import Client

from jobs.api import enqueue
from jobs.models import DeadLetter
from shop import sentry
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.ops.envelopes import SentryServer
from tests.utils import wait_for

ORDER = {
    "email": "grace@example.com",
    "name": "Grace Hopper",
    "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    "lines": [{"sku": "ERR-1", "quantity": 1}],
    "payment_token": "tok_visa",
}


@pytest.fixture
def sentry_server():
    server = SentryServer()
    yield server
    server.stop()


def test_reports_are_off_unless_a_dsn_is_set():
    assert sentry.setup() is False


@pytest.mark.django_db
def test_an_unhandled_api_error_is_reported_with_its_request_and_order_and_no_customer_data(
    sentry_server, settings
):
    ProductFactory(sku="ERR-1", stock=5)
    settings.PAYMENT_GATEWAY = "tests.ops.gateways.ExplodingGateway"
    sentry.setup(dsn=sentry_server.dsn)
    try:
        response = Client().post(
            "/api/orders", ORDER, content_type="application/json", headers={"X-Request-ID": "req-err-1"}
        )
        assert response.status_code == 500
        assert response.json() == {"error": "server_error", "message": "Internal server error."}
        wait_for(lambda: sentry_server.events, timeout=20, message="the error event")
    finally:
        sentry.teardown()
    (event,) = sentry_server.events
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"].startswith("gateway bug while charging [Filtered] for ")
    assert event["tags"]["request_id"] == "req-err-1"
    assert event["tags"]["order_number"] == exception["value"].rsplit(" ", 1)[1]
    raw = b"".join(sentry_server.raw)
    assert b"grace@example.com" not in raw and b"tok_visa" not in raw


@pytest.mark.django_db(transaction=True)
def test_a_dead_job_is_reported_once_with_its_context_not_each_retried_attempt(sentry_server, tmp_path):
    workers = WorkerProcesses(tmp_path)
    worker = workers.start(env={"SENTRY_DSN": sentry_server.dsn})
    try:
        job = enqueue("test.leaky", {"email": "ada@example.com", "order_number": "ORD-TEST-1"})
        wait_for(
            lambda: DeadLetter.objects.filter(job_id=job.id).exists(),
            timeout=60,
            message=f"the job is dead; worker log:\n{workers.output(worker)[-3000:]}",
        )
        wait_for(lambda: sentry_server.events, timeout=20, message="the dead job's event")
        worker.send_signal(signal.SIGTERM)  # exiting flushes whatever the SDK still holds
        assert workers.exit_code(worker, 30) == 0
    finally:
        workers.stop_all()
    (event,) = sentry_server.events  # two attempts, one report
    assert {k: event["tags"][k] for k in ("job_id", "job_type", "attempt", "queue", "order_number")} == {
        "job_id": str(job.id),
        "job_type": "test.leaky",
        "attempt": "2",
        "queue": "default",
        "order_number": "ORD-TEST-1",
    }
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "cannot mail [Filtered] about card [Filtered] on attempt 2"
    raw = b"".join(sentry_server.raw)
    assert b"ada@example.com" not in raw and b"tok_4242secret" not in raw
