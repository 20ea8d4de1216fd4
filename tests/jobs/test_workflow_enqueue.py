"""enqueue_workflow: a workflow's jobs and their dependencies stored in one INSERT, whole or not at all."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs.api import enqueue, enqueue_workflow, prepare
from jobs.models import Job, JobDependency, JobStatus
from jobs.testing import run_jobs
from tests.testapp.models import Run

pytestmark = pytest.mark.django_db


def diamond(prefix: str = "", **options):
    """confirm -> (invoice, sync) -> fulfil, as an order's pipeline is."""
    names = ["confirm", "invoice", "sync", "fulfil"]
    jobs = [
        prepare("test.record", {"key": name}, unique_key=f"{prefix}{name}" if prefix else None, **options)
        for name in names
    ]
    confirm, invoice, sync, fulfil = jobs
    return jobs, [(confirm, invoice), (confirm, sync), (invoice, fulfil), (sync, fulfil)]


def test_a_workflow_is_stored_with_its_dependencies_and_runs_parents_first():
    jobs, edges = diamond("order:1:")
    stored = enqueue_workflow(jobs, edges)
    assert stored == jobs and all(job.pk is not None for job in jobs)
    rows = {job.payload["key"]: job for job in Job.objects.all()}
    assert rows["confirm"].status == JobStatus.PENDING and rows["confirm"].waiting_on == 0
    assert [rows[n].status for n in ("invoice", "sync", "fulfil")] == [JobStatus.BLOCKED] * 3
    assert [rows[n].waiting_on for n in ("invoice", "sync", "fulfil")] == [1, 1, 2]
    assert set(JobDependency.objects.values_list("parent__payload__key", "child__payload__key")) == {
        ("confirm", "invoice"),
        ("confirm", "sync"),
        ("invoice", "fulfil"),
        ("sync", "fulfil"),
    }
    assert rows["confirm"].unique_key == "order:1:confirm"
    run_jobs()
    order = list(Run.objects.order_by("id").values_list("key", flat=True))
    assert order[0] == "confirm" and set(order[1:3]) == {"invoice", "sync"} and order[3] == "fulfil"
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}


def test_a_workflow_job_is_stored_as_an_enqueued_one_is():
    """Found by its payload, tags and meta as the ORM compares them (SQLite compares JSON as text)."""
    job = prepare("test.record", {"key": "confirm"}, tags=["order:7"], meta={"by": "ada"})
    enqueue_workflow([job])
    single = enqueue("test.record", {"key": "single"}, tags=["order:7"], meta={"by": "ada"})
    assert Job.objects.filter(payload={"key": "confirm"}).get() == job
    assert set(Job.objects.filter(tags=["order:7"], meta={"by": "ada"})) == {job, single}
    stored = Job.objects.get(id=job.id)
    assert (stored.payload, stored.tags, stored.meta, stored.priority) == (
        {"key": "confirm"},
        ["order:7"],
        {"by": "ada"},
        single.priority,
    )
    assert stored.run_at == job.run_at and stored.created_at == job.created_at


def test_a_workflow_is_one_insert_on_postgresql_and_two_on_sqlite():
    jobs, edges = diamond("order:2:")
    with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
        enqueue_workflow(jobs, edges)
    statements = [q["sql"] for q in ctx.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    statements = [s for s in statements if not s.startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]
    assert len(statements) == (1 if connection.vendor == "postgresql" else 2), statements
    assert not any(q["sql"].startswith("SAVEPOINT") for q in ctx.captured_queries)
    assert JobDependency.objects.count() == 4


def test_a_workflow_whose_unique_key_is_held_stores_nothing():
    held = enqueue("test.record", {"key": "earlier"}, unique_key="order:3:sync")
    jobs, edges = diamond("order:3:")  # the third job's key is held: the first two would fit
    with transaction.atomic():
        assert enqueue_workflow(jobs, edges) == []
        assert list(Job.objects.all()) == [held]
    assert all(job.pk is None for job in jobs)
    assert JobDependency.objects.count() == 0
    run_jobs()
    # Once the holder finished, the same workflow is stored whole.
    jobs, edges = diamond("order:3:")
    assert len(enqueue_workflow(jobs, edges)) == 4 and JobDependency.objects.count() == 4


def test_a_workflow_enqueued_twice_is_stored_once():
    first = enqueue_workflow(*diamond("order:4:"))
    assert enqueue_workflow(*diamond("order:4:")) == []
    assert Job.objects.count() == 4 and {j.pk for j in first} == set(Job.objects.values_list("id", flat=True))


def test_a_rollback_leaves_no_workflow():
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue_workflow(*diamond("order:5:"))
        raise RuntimeError("the caller's transaction fails")
    assert Job.objects.count() == 0 and JobDependency.objects.count() == 0


def test_bad_workflows_are_refused_and_store_nothing():
    a, b = prepare("test.record", {"key": "a"}), prepare("test.record", {"key": "b"})
    stranger = prepare("test.record", {"key": "c"})
    with pytest.raises(ValueError, match="cycle"):
        enqueue_workflow([a, b], [(a, b), (b, a)])
    with pytest.raises(ValueError, match="itself"):
        enqueue_workflow([a, b], [(a, a)])
    with pytest.raises(ValueError, match="not among"):
        enqueue_workflow([a, b], [(a, stranger)])
    with pytest.raises(ValueError, match="each given once"):
        enqueue_workflow([a, a], [])
    stored = enqueue("test.record", {"key": "d"})
    with pytest.raises(ValueError, match="unsaved"):
        enqueue_workflow([stored, a], [(stored, a)])
    assert list(Job.objects.all()) == [stored]


@pytest.mark.django_db(transaction=True)
def test_a_workflow_wakes_listeners_once_per_queue_of_its_pending_jobs(settings):
    if connection.vendor != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    if not settings.JOBS_LISTEN_NOTIFY:
        pytest.skip("LISTEN/NOTIFY is off")
    import psycopg

    from jobs.db import NOTIFY_CHANNEL, listen_conninfo

    with psycopg.connect(**listen_conninfo()) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        confirm = prepare("test.record", {"key": "confirm"}, queue="first")
        other = prepare("test.record", {"key": "other"}, queue="second")
        blocked = prepare("test.record", {"key": "blocked"}, queue="third")
        with transaction.atomic():
            enqueue_workflow([confirm, other, blocked], [(confirm, blocked)])
        heard = [note.payload for note in listener.notifies(timeout=2.0, stop_after=3)]
    assert sorted(heard) == ["first", "second"]  # the blocked job's queue hears nothing yet


def test_a_keyed_workflow_job_carries_its_fair_key_and_is_claimed():
    # Jobs with a concurrency key are claimed by fair share, through their fair_key: a workflow's
    # insert that left it out stored a job no claim would ever take.
    from jobs import engine

    job = prepare("test.keyed", {"group": "g1"})
    (stored,) = enqueue_workflow([job])
    row = Job.objects.get(id=stored.id)
    assert (row.concurrency_key, row.fair_key) == ("group:g1", "group:g1")
    assert [claimed.id for claimed in engine.claim("w", 5)] == [row.id]
