"""The pipeline's progress on the customer's order page and in GET /api/orders/<token>."""

import re

import pytest

from jobs.models import Job
from jobs.testing import run_jobs
from orders.services import cancel_order
from tests.pipeline.servers import HANG

pytestmark = pytest.mark.django_db


def states(client, order) -> dict[str, str]:
    data = client.get(f"/api/orders/{order.token}").json()
    return {step["step"]: step["state"] for step in data["pipeline"]}


def test_api_shows_every_step_waiting_right_after_payment(place, client):
    order = place()
    assert states(client, order) == {
        "confirmation": "pending",
        "invoice": "waiting",
        "inventory": "waiting",
        "fulfilled": "waiting",
    }


def test_api_shows_every_step_done_with_the_invoice_link_once_fulfilled(place, client):
    order = place()
    run_jobs()
    data = client.get(f"/api/orders/{order.token}").json()
    assert data["status"] == "fulfilled"
    assert [(s["step"], s["state"]) for s in data["pipeline"]] == [
        ("confirmation", "done"),
        ("invoice", "done"),
        ("inventory", "done"),
        ("fulfilled", "done"),
    ]
    invoice = data["pipeline"][1]
    assert invoice["download_url"] == f"/orders/{order.token}/invoice.pdf"
    assert client.get(invoice["download_url"]).status_code == 200
    assert all(s["at"] for s in data["pipeline"])


def test_a_step_being_retried_shows_a_friendly_line_and_never_the_error(place, client, http_server, settings):
    server = http_server([500], default=500)
    settings.WAREHOUSE_URL = server.url
    order = place()
    run_jobs()
    job = Job.objects.get(unique_key=f"order:{order.id}:inventory")
    assert job.errors and "HTTP 500" in job.errors[0]["message"]
    response = client.get(f"/api/orders/{order.token}")
    (step,) = [s for s in response.json()["pipeline"] if s["step"] == "inventory"]
    assert step["state"] == "retrying"
    assert "retrying automatically" in step["message"]
    page = client.get(f"/orders/{order.token}/").content.decode()
    for text in (response.content.decode(), page):
        assert "HTTP 500" not in text and "Traceback" not in text and server.url not in text
    assert 'data-step="inventory" data-state="retrying"' in page
    assert "retrying automatically" in page


def test_a_step_that_gave_up_is_shown_as_delayed_without_details(place, client, http_server, settings):
    server = http_server(default=400)
    settings.WAREHOUSE_URL = server.url
    order = place()
    run_jobs()
    pipeline = {s["step"]: s for s in client.get(f"/api/orders/{order.token}").json()["pipeline"]}
    assert pipeline["inventory"]["state"] == "delayed"
    assert pipeline["fulfilled"]["state"] == "delayed"
    assert "Our team has been notified" in pipeline["inventory"]["message"]
    for step in pipeline.values():
        assert set(step) <= {"step", "label", "state", "state_label", "message", "at", "download_url"}
        assert "400" not in step["message"] and "HTTP" not in step["message"]


def test_timeout_state_is_retrying_too(place, client, http_server, settings):
    settings.HTTP_TIMEOUT = 0.2
    settings.WAREHOUSE_URL = http_server(default=HANG).url
    order = place()
    run_jobs()
    assert states(client, order)["inventory"] == "retrying"


def test_steps_left_undone_by_a_cancelled_order_are_skipped(place, client):
    order = place()
    run_jobs(max_jobs=1)  # the confirmation only
    cancel_order(order, actor="staff:grace")
    assert states(client, order) == {
        "confirmation": "done",
        "invoice": "skipped",
        "inventory": "skipped",
        "fulfilled": "skipped",
    }


def test_an_unpaid_order_has_no_pipeline(place, client):
    order = place(token="tok_chargeDeclined")
    assert client.get(f"/api/orders/{order.token}").json()["pipeline"] == []
    assert 'id="pipeline"' not in client.get(f"/orders/{order.token}/").content.decode()


def test_order_page_shows_the_timeline_and_payment_and_polls_the_api_without_a_cdn(place, client):
    order = place()
    page = client.get(f"/orders/{order.token}/").content.decode()
    assert "Payment: Succeeded, 23.80 EUR" in page
    for step in ("confirmation", "invoice", "inventory", "fulfilled"):
        assert f'data-step="{step}"' in page
    assert f'data-status-url="/api/orders/{order.token}"' in page
    assert "setTimeout(poll, 2000)" in page
    assert not re.search(r"<script[^>]+src=", page)  # inline, nothing fetched from elsewhere


def test_order_page_links_the_invoice_when_it_is_ready(place, client):
    order = place()
    run_jobs()
    page = client.get(f"/orders/{order.token}/").content.decode()
    assert f'href="/orders/{order.token}/invoice.pdf"' in page
    assert 'data-step="fulfilled" data-state="done"' in page


def test_the_poll_makes_the_same_few_queries_however_many_jobs_the_order_has(
    place, client, django_assert_max_num_queries
):
    """The page and its poll read the order's events (one indexed query), never its job rows."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    order = place()
    run_jobs()

    def counted(url: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    api, page = counted(f"/api/orders/{order.token}"), counted(f"/orders/{order.token}/")
    for n in range(200):  # retries, webhooks, anything: jobs keyed to the order
        Job.objects.create(type="deliver_webhook", unique_key=f"order:{order.id}:extra-{n}", payload={})
    assert counted(f"/api/orders/{order.token}") == api
    assert counted(f"/orders/{order.token}/") == page
    with django_assert_max_num_queries(12):
        client.get(f"/api/orders/{order.token}")
    with django_assert_max_num_queries(12):
        client.get(f"/orders/{order.token}/")
    with CaptureQueriesContext(connection) as queries:
        client.get(f"/api/orders/{order.token}")
    assert not [q for q in queries.captured_queries if "jobs_job" in q["sql"]]
