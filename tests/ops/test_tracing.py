"""Tracing across jobs: an order's trace holds the HTTP request, the enqueues and every job run they led
to (in a real runworker process), as one tree; retries are spans of their own with their attempt
number, failures carry the exception."""

import json
from pathlib import Path

import pytest
from django.test import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jobs.models import Job
from jobs.testing import run_jobs
from orders.models import Order, WebhookEndpoint
from shop import tracing
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.utils import wait_for

ORDER = {
    "email": "grace@example.com",
    "name": "Grace Hopper",
    "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    "lines": [{"sku": "TRACE-1", "quantity": 1}],
    "payment_token": "tok_visa",
}


@pytest.fixture
def spans():
    """Tracing on in this process, its spans kept by the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    tracing.setup(exporter=exporter)
    yield exporter
    tracing.teardown()


def hexid(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def as_record(span) -> dict:
    """An in-memory span in the shape ConsoleSpanExporter writes (the worker's file)."""
    return json.loads(span.to_json(indent=None))


def read_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tracing_is_off_unless_configured():
    assert not tracing.enabled()
    assert tracing.setup() is False  # no OTEL_EXPORTER_OTLP_ENDPOINT, no OTEL_TRACES_FILE


def test_the_default_sampler_keeps_every_trace_up_to_its_rate_then_its_ratio_and_children_follow():
    from opentelemetry.sdk.trace.sampling import ParentBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    now = [100.0]
    sampler = ParentBased(root=tracing.reservoir_sampler(10, 0.1, clock=lambda: now[0]))
    trace_ids = [(i * 0x9E3779B97F4A7C15 * 0x100000001B3) % (1 << 128) for i in range(1, 2001)]

    def kept(ids, parent=None) -> int:
        return sum(sampler.should_sample(parent, t, "run x").decision.is_sampled() for t in ids)

    assert kept(trace_ids[:10]) == 10  # the first ten of a second, whatever their ids
    beyond = kept(trace_ids[10:])  # the rest of that second: a tenth, by trace id
    assert 120 < beyond < 280, beyond
    now[0] += 1.0
    assert kept(trace_ids[:10]) == 10  # a new second, a new reservoir

    def parent(sampled: bool):
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        context = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=flags)
        return set_span_in_context(NonRecordingSpan(context))

    # a job run follows the request (or job) that enqueued it, reservoir or not: a trace is kept whole
    assert kept(trace_ids[:50], parent(True)) == 50
    assert kept(trace_ids[:50], parent(False)) == 0


def test_the_sampler_keeps_no_more_than_its_ceiling_a_second_whatever_the_ratio():
    """A burst of thousands of new traces a second (a drain of jobs enqueued by an untraced process)
    costs at most the ceiling's spans a second: the ratio's share of a burst is not bounded."""
    now = [100.0]
    trace_ids = [(i * 0x9E3779B97F4A7C15 * 0x100000001B3) % (1 << 128) for i in range(1, 5001)]

    def kept(sampler, ids) -> int:
        return sum(sampler.should_sample(None, t, "run x").decision.is_sampled() for t in ids)

    capped = tracing.reservoir_sampler(10, 1.0, clock=lambda: now[0], ceiling=50)
    assert kept(capped, trace_ids) == 50  # ten from the reservoir, forty by the ratio, then none
    now[0] += 1.0
    assert kept(capped, trace_ids[:60]) == 50  # a new second, a new allowance
    # under its ceiling, the ratio decides as before (by trace id), and the reservoir always counts
    loose = tracing.reservoir_sampler(10, 0.1, clock=lambda: now[0], ceiling=10_000)
    assert 10 + 380 < kept(loose, trace_ids) < 10 + 620
    assert kept(tracing.reservoir_sampler(10, 0.1, clock=lambda: now[0], ceiling=10), trace_ids) == 10
    assert "at most 50/s" in capped.get_description()


@pytest.mark.django_db
def test_an_enqueue_stores_its_span_context_on_the_job_and_the_run_is_its_child(spans):
    ProductFactory(sku="TRACE-1", stock=5)
    response = Client().post("/api/orders", ORDER, content_type="application/json")
    assert response.status_code == 201, response.content
    (request,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    trace_id = hexid(request.context.trace_id, 32)
    job = Job.objects.get(type="send_order_confirmation")
    assert job.trace_context["traceparent"].split("-")[1] == trace_id[2:]
    run_jobs(max_jobs=1)
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    (run,) = [s for s in by_id.values() if s.name == "run send_order_confirmation"]
    enqueue = by_id[run.parent.span_id]
    assert enqueue.name == "enqueue send_order_confirmation"
    assert by_id[enqueue.parent.span_id] is request
    assert run.attributes["job.id"] == job.id and run.attributes["job.attempt"] == 1
    assert run.attributes["shop.order_number"] == response.json()["number"]
    assert "grace@example.com" not in json.dumps([as_record(s) for s in by_id.values()])


@pytest.mark.django_db
def test_a_dropped_requests_jobs_carry_its_own_context_and_no_enqueue_span_is_built(spans):
    """Most requests under load are in a dropped trace: their jobs carry the request's context as it is
    (not sampled), so their runs are dropped too, without a span built per enqueue."""
    ProductFactory(sku="TRACE-1", stock=5)
    ids = tracing._state["ids"]
    drawn: list[int] = []
    original = ids.generate_span_id
    ids.generate_span_id = lambda: drawn.append(original()) or drawn[-1]
    upstream = f"00-{'ab' * 16}-{'cd' * 8}-00"  # the proxy in front decided not to sample
    try:
        response = Client().post(
            "/api/orders", ORDER, content_type="application/json", headers={"traceparent": upstream}
        )
    finally:
        del ids.generate_span_id
    assert response.status_code == 201, response.content
    assert len(drawn) == 1  # the request's span only
    jobs = Job.objects.all()
    assert len(jobs) == 4  # the pipeline
    assert {job.trace_context["traceparent"] for job in jobs} == {f"00-{'ab' * 16}-{drawn[0]:016x}-00"}
    assert run_jobs() >= 4
    assert spans.get_finished_spans() == ()  # the whole trace dropped: nothing exported


@pytest.mark.django_db
def test_a_snoozed_run_ends_its_span_with_the_outcome_snoozed(spans):
    from jobs.api import enqueue

    job = enqueue("test.snoozy", {"key": "traced", "times": 1, "seconds": 30})
    run_jobs()
    (run,) = [s for s in spans.get_finished_spans() if s.name == "run test.snoozy"]
    assert run.attributes["job.id"] == job.id
    assert (run.attributes["job.outcome"], run.attributes["job.snooze_seconds"]) == ("snoozed", 30.0)


@pytest.mark.django_db(transaction=True)
def test_an_orders_trace_follows_every_job_it_spawned_in_a_worker_process(
    spans, tmp_path, http_server, settings
):
    ProductFactory(sku="TRACE-1", stock=5)
    warehouse = http_server(script=[503])  # the first sync fails: two attempts, two spans
    receiver = http_server()
    WebhookEndpoint.objects.create(url=receiver.url, secret="s", events=["order.paid", "order.fulfilled"])
    span_file = tmp_path / "worker-spans.jsonl"
    workers = WorkerProcesses(tmp_path)
    worker = workers.start(
        env={
            "OTEL_TRACES_FILE": str(span_file),
            "WAREHOUSE_URL": warehouse.url + "stock",
            "EMAIL_URL": f"filemail://{tmp_path / 'mail'}",
            "MEDIA_ROOT": settings.MEDIA_ROOT,
        }
    )
    try:
        response = Client().post("/api/orders", ORDER, content_type="application/json")
        assert response.status_code == 201, response.content
        (request,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        trace_id = hexid(request.context.trace_id, 32)
        expected = [
            "run deliver_webhook",
            "run deliver_webhook",
            "run generate_invoice",
            "run mark_order_fulfilled",
            "run send_order_confirmation",
            "run sync_inventory",
            "run sync_inventory",
        ]

        def worker_spans():
            found = [s for s in read_spans(span_file) if s["context"]["trace_id"] == trace_id]
            runs = sorted(s["name"] for s in found if s["name"].startswith("run "))
            return found if runs == expected else None

        found = wait_for(
            worker_spans,
            timeout=90,
            message=f"the pipeline's spans; worker log:\n{workers.output(worker)[-3000:]}",
        )
    finally:
        workers.stop_all()
    assert Order.objects.get().status == "fulfilled"

    web = [as_record(s) for s in spans.get_finished_spans() if hexid(s.context.trace_id, 32) == trace_id]
    every = {s["context"]["span_id"]: s for s in web + found}
    roots = [s for s in every.values() if s["parent_id"] is None]
    assert [r["context"]["span_id"] for r in roots] == [hexid(request.context.span_id, 16)]
    for span in every.values():  # one tree: each parent is in the trace
        assert span["parent_id"] is None or span["parent_id"] in every, span["name"]
    for span in found:  # every run hangs off an enqueue span
        if span["name"].startswith("run "):
            assert every[span["parent_id"]]["name"] == "enqueue " + span["name"].removeprefix("run ")

    syncs = sorted(
        (s for s in found if s["name"] == "run sync_inventory"), key=lambda s: s["attributes"]["job.attempt"]
    )
    assert [s["attributes"]["job.attempt"] for s in syncs] == [1, 2]
    assert [s["status"]["status_code"] for s in syncs] == ["ERROR", "OK"]
    assert syncs[0]["attributes"]["job.outcome"] == "retry"
    (event,) = syncs[0]["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"].endswith("TransientHTTPError")

    # The order.fulfilled webhook was enqueued by the mark_order_fulfilled job, inside its run's span.
    fulfilled_run = next(s for s in found if s["name"] == "run mark_order_fulfilled")
    enqueued_by_job = [s for s in found if s["name"] == "enqueue deliver_webhook"]
    assert [s["parent_id"] for s in enqueued_by_job] == [fulfilled_run["context"]["span_id"]]
    assert "grace@example.com" not in span_file.read_text()


@pytest.fixture
def sampling(spans):
    """Set the reservoir the job runs decide with (and the provider samples by) for one test."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    tracer = tracing._state["tracer"]  # a tracer holds the provider's sampler from its creation
    saved = tracer.sampler, tracing._state["root"]
    assert saved[1] is not None, "job runs decide with the shop's reservoir"

    def use(per_second: float, ratio: float, ceiling: float | None = None):
        root = tracing.reservoir_sampler(per_second, ratio, clock=lambda: 100.0, ceiling=ceiling)
        tracer.sampler, tracing._state["root"] = ParentBased(root=root), root
        return root

    yield use
    tracer.sampler, tracing._state["root"] = saved


@pytest.mark.django_db
def test_a_dropped_job_run_builds_no_span_yet_its_handler_and_its_jobs_follow_the_decision(spans, sampling):
    from tests.testapp.jobs import TRACED

    TRACED.clear()
    sampling(0, 0.0)  # every new trace dropped
    Job.objects.all().delete()
    from jobs.api import enqueue

    enqueue("test.traced", {"key": "parent"})
    Job.objects.update(trace_context=None)  # as if enqueued by an untraced process: its run is a root
    assert run_jobs() == 2
    parent, child = TRACED
    assert (parent["key"], child["key"]) == ("parent", "child")
    # the handler ran inside the dropped trace (valid ids, not sampled) and so did the job it enqueued
    assert parent["valid"] and not parent["sampled"]
    assert child["trace_id"] == parent["trace_id"] and not child["sampled"]
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("run ")]


@pytest.mark.django_db
def test_past_the_ceiling_root_runs_draw_no_trace_and_share_one_dropped_context_their_jobs_follow(
    spans, sampling
):
    from jobs.api import enqueue
    from tests.testapp.jobs import TRACED

    TRACED.clear()
    Job.objects.all().delete()
    enqueue("test.traced", {"key": "parent"})
    enqueue("test.traced", {"key": "other"})
    Job.objects.update(trace_context=None)  # enqueued by an untraced process: each run is a root
    spans.clear()
    root = sampling(1, 1.0, ceiling=1)
    assert root.decide(123) and root.full()  # this second's one trace is taken
    drawn = []
    ids = tracing._state["ids"]
    original = ids.generate_trace_id
    ids.generate_trace_id = lambda: drawn.append(1) or original()
    try:
        assert run_jobs() == 3
    finally:
        del ids.generate_trace_id
    assert drawn == []  # dropped before a trace id was drawn, the child by its parent's decision
    assert [t["key"] for t in TRACED] == ["parent", "other", "child"]
    assert all(t["valid"] and not t["sampled"] for t in TRACED)
    assert len({t["trace_id"] for t in TRACED}) == 1  # the one dropped context, never exported
    assert not [s for s in spans.get_finished_spans() if s.name.startswith(("run ", "enqueue "))]


@pytest.mark.django_db
def test_a_kept_root_run_counts_once_against_the_reservoir_and_keeps_its_chosen_trace(spans, sampling):
    from jobs.api import enqueue
    from tests.testapp.jobs import TRACED

    TRACED.clear()
    sampling(1, 0.0)  # one new trace a second, none beyond
    Job.objects.all().delete()
    enqueue("test.traced", {"key": "first"})
    enqueue("test.traced", {"key": "second"})
    Job.objects.update(trace_context=None)  # enqueued by an untraced process: each run is a root
    sampling(1, 0.0)  # a fresh reservoir (the enqueues took nothing from it)
    assert run_jobs() == 2
    runs = [s for s in spans.get_finished_spans() if s.name == "run test.traced"]
    # decided once before the span was built: the reservoir's one place went to the first run only
    assert len(runs) == 1, [s.attributes for s in runs]
    first, second = TRACED
    assert first["sampled"] and runs[0].context.trace_id == first["trace_id"]
    assert second["valid"] and not second["sampled"]
