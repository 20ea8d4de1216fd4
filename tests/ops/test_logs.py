"""Structured logs: LOG_FORMAT=json writes one JSON object per line with the context in force (request
id; order number, job id, type, attempt, worker id inside a job), tracebacks as one field, and no
customer email or payment token."""

import io
import json
import logging
import subprocess

import pytest
from django.test import Client

from jobs.models import Job
from shop.logging import ContextFilter, JsonFormatter, bound
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.utils import manage_py, subprocess_env, wait_for

ORDER = {
    "email": "grace@example.com",
    "name": "Grace Hopper",
    "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    "lines": [{"sku": "LOG-1", "quantity": 1}],
    "payment_token": "tok_visa",
}


@pytest.fixture
def json_lines():
    """Records of the root logger, formatted as LOG_FORMAT=json formats them, one string per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def test_a_traceback_is_one_field_of_one_line(json_lines):
    try:
        raise ValueError("card for ada@example.com with tok_visa was refused")
    except ValueError:
        with bound(order_number="ORD-1"):
            logging.getLogger("shop.test").exception("charging %s failed", "ada@example.com")
    (line,) = json_lines()
    assert line["level"] == "ERROR" and line["logger"] == "shop.test"
    assert line["message"] == "charging [Filtered] failed"
    assert line["order_number"] == "ORD-1"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: card for [Filtered] with [Filtered] was refused" in line["exc_info"]
    assert "T" in line["time"] and line["time"].endswith("+00:00")


def test_a_request_logs_with_its_request_id(json_lines):
    response = Client().get("/api/no-such-thing", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 404
    lines = [line for line in json_lines() if line["logger"] == "django.request"]
    assert [(line["message"], line["request_id"]) for line in lines] == [
        ("Not Found: /api/no-such-thing", "req-42")
    ]


def test_an_unknown_log_format_is_refused_with_a_clear_error():
    result = subprocess.run(
        [*manage_py(), "check"],
        capture_output=True,
        text=True,
        env=subprocess_env(LOG_FORMAT="xml"),
        timeout=60,
    )
    assert result.returncode != 0
    assert "LOG_FORMAT must be text or json, not 'xml'." in result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_worker_logs_json_lines_carrying_the_job_and_its_order(tmp_path, http_server, settings):
    ProductFactory(sku="LOG-1", stock=5)
    warehouse = http_server(script=[503])  # the first sync fails: its failure is logged inside the job
    workers = WorkerProcesses(tmp_path)
    worker = workers.start(
        env={
            "LOG_FORMAT": "json",
            "WAREHOUSE_URL": warehouse.url + "stock",
            "EMAIL_URL": f"filemail://{tmp_path / 'mail'}",
            "MEDIA_ROOT": settings.MEDIA_ROOT,
        }
    )
    try:
        response = Client().post("/api/orders", ORDER, content_type="application/json")
        assert response.status_code == 201, response.content
        number = response.json()["number"]
        wait_for(
            lambda: Job.objects.filter(type="sync_inventory", status="succeeded").exists(),
            timeout=60,
            message=f"inventory synced; worker log:\n{workers.output(worker)[-3000:]}",
        )
    finally:
        workers.stop_all()
    output = workers.output(worker)
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    job = Job.objects.get(type="sync_inventory")
    failed = [line for line in lines if line.get("job_type") == "sync_inventory" and line.get("attempt") == 1]
    assert failed, output[-3000:]
    assert {k: failed[0][k] for k in ("job_id", "job_type", "attempt", "order_number", "level")} == {
        "job_id": job.id,
        "job_type": "sync_inventory",
        "attempt": 1,
        "order_number": number,
        "level": "INFO",
    }
    (started,) = [
        line["message"]
        for line in lines
        if line["message"].endswith(" started: queues=* concurrency=1 prefetch=1")
    ]
    assert failed[0]["worker_id"] == started.split()[1]
    assert "TransientHTTPError" in failed[0]["message"]
    assert "grace@example.com" not in output and "tok_visa" not in output
