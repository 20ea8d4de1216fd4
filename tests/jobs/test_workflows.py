"""Chaining, fan-out/fan-in, dependencies, cancellation, unique jobs, payload versions, batches, pruning."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from jobs import engine
from jobs.api import cancel, enqueue, prepare
from jobs.models import AuditEntry, CronSchedule, Job, JobDependency, JobStatus
from jobs.pruner import prune
from jobs.testing import run_jobs
from tests.testapp.models import Run

pytestmark = pytest.mark.django_db


def status(job: Job) -> str:
    return Job.objects.get(id=job.id).status


def test_then_children_wait_blocked_and_are_released_when_the_parent_succeeds():
    a, b = prepare("test.record", {"key": "a"}), prepare("test.record", {"key": "b"})
    parent = enqueue("test.record", {"key": "parent"}, then=[a, b])
    assert (status(a), status(b)) == (JobStatus.BLOCKED, JobStatus.BLOCKED)
    assert list(Job.objects.get(id=a.id).parents.all()) == [parent]
    assert set(parent.children.all()) == {a, b}
    (claimed,) = engine.claim("w", 10)  # only the parent is due
    assert claimed.id == parent.id
    engine.complete(claimed, None)
    # released in the transaction that marked the parent succeeded
    assert (status(a), status(b)) == (JobStatus.PENDING, JobStatus.PENDING)


def test_fan_in_child_runs_only_when_all_parents_succeeded():
    invoice, sync = prepare("test.record", {"key": "invoice"}), prepare("test.record", {"key": "sync"})
    root = enqueue("test.record", {"key": "confirm"}, then=[invoice, sync])
    done = enqueue("test.record", {"key": "fulfil"}, depends_on=[invoice, sync])
    assert status(done) == JobStatus.BLOCKED and Job.objects.get(id=done.id).waiting_on == 2
    (job,) = engine.claim("w", 1)
    engine.complete(job)
    assert job.id == root.id
    first = engine.claim("w", 1)[0]
    engine.complete(first)
    assert status(done) == JobStatus.BLOCKED
    second = engine.claim("w", 1)[0]
    engine.complete(second)
    assert status(done) == JobStatus.PENDING
    run_jobs()
    assert list(Run.objects.order_by("id").values_list("key", flat=True))[-1] == "fulfil"


def test_depends_on_existing_jobs_and_on_already_finished_ones():
    finished = enqueue("test.record", {"key": "old"})
    run_jobs()
    waiting_parent = enqueue("test.record", {"key": "p"}, delay=3600)
    after_finished = enqueue("test.record", {"key": "x"}, depends_on=[finished])
    after_waiting = enqueue("test.record", {"key": "y"}, depends_on=[finished.id, waiting_parent])
    assert status(after_finished) == JobStatus.PENDING
    assert status(after_waiting) == JobStatus.BLOCKED


def test_depends_on_unknown_job_is_an_error_and_stores_nothing():
    with pytest.raises(ValueError, match="unknown job"):
        enqueue("test.record", {"key": "x"}, depends_on=[999999])
    assert Job.objects.count() == 0


def test_dead_parent_cancels_waiting_descendants_with_a_reason():
    child = prepare("test.record", {"key": "child"})
    parent = enqueue("test.permanent", {"key": "p"}, then=[child])
    grandchild = enqueue("test.record", {"key": "grandchild"}, depends_on=[child])
    run_jobs()
    assert status(parent) == JobStatus.DEAD
    for job in (child, grandchild):
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
    assert child.status_reason == f"parent job #{parent.id} is dead"
    assert grandchild.status_reason == f"parent job #{child.id} was cancelled"


def test_cancelling_a_pending_parent_cancels_it_and_its_children_at_once():
    child = prepare("test.record", {"key": "child"})
    parent = enqueue("test.record", {"key": "p"}, then=[child])
    assert cancel(parent.id, "order cancelled") == JobStatus.CANCELLED
    parent.refresh_from_db()
    assert parent.status_reason == "order cancelled" and parent.finished_at
    assert status(child) == JobStatus.CANCELLED
    assert run_jobs() == 0


def test_depending_on_a_dead_job_is_cancelled_at_once():
    parent = enqueue("test.permanent", {"key": "p"})
    run_jobs()
    child = enqueue("test.record", {"key": "c"}, depends_on=[parent])
    assert status(child) == JobStatus.CANCELLED


def test_unique_key_returns_the_unfinished_job_instead_of_a_second_one():
    first = enqueue("test.record", {"key": "a"}, unique_key="report:2026-11-22")
    again = enqueue("test.record", {"key": "a"}, unique_key="report:2026-11-22")
    assert again.id == first.id and Job.objects.count() == 1
    run_jobs()
    later = enqueue("test.record", {"key": "a"}, unique_key="report:2026-11-22")
    assert later.id != first.id  # the first one finished, the key is free again


def test_a_duplicate_keyed_enqueue_adds_no_job_child_or_dependency():
    from jobs.models import JobDependency

    parent = enqueue("test.record", {"key": "p"})
    child = prepare("test.record", {"key": "c"})
    first = enqueue("test.record", {"key": "a"}, unique_key="wf", then=[child], depends_on=[parent])
    late_child = prepare("test.record", {"key": "c2"})
    again = enqueue("test.record", {"key": "a"}, unique_key="wf", then=[late_child], depends_on=[parent])
    assert again.id == first.id and late_child.pk is None
    assert Job.objects.count() == 3
    assert set(JobDependency.objects.values_list("parent_id", "child_id")) == {
        (parent.id, first.id),
        (first.id, child.pk),
    }
    assert status(first) == JobStatus.BLOCKED and Job.objects.get(id=first.id).waiting_on == 1


@pytest.mark.django_db(transaction=True)
def test_unique_key_holds_under_concurrent_enqueues():
    ids, errors = [], []
    barrier = threading.Barrier(6)

    def enqueue_one():
        try:
            barrier.wait()
            ids.append(enqueue("test.record", {"key": "race"}, unique_key="race").id)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=enqueue_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(set(ids)) == 1 and Job.objects.filter(unique_key="race").count() == 1


def test_unique_key_is_enforced_by_the_database():
    from django.db import IntegrityError, transaction

    enqueue("test.record", {}, unique_key="k")
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(type="test.record", unique_key="k")


def test_job_queued_with_an_older_payload_version_is_upgraded_and_runs():
    old = Job.objects.create(type="test.versioned", payload={"name": "Ada Lovelace"}, payload_version=1)
    fresh = enqueue("test.versioned", {"first_name": "Alan", "last_name": "Turing"})
    assert fresh.payload_version == 2
    run_jobs()
    old.refresh_from_db()
    assert old.status == JobStatus.SUCCEEDED and old.result == "hello Ada Lovelace"
    assert Job.objects.get(id=fresh.id).result == "hello Alan Turing"


def test_batch_handler_gets_several_jobs_and_each_outcome_is_recorded():
    jobs = [enqueue("test.batch", {"n": n}) for n in range(10, 22)]
    run_jobs()
    batches = list(Run.objects.order_by("id").values_list("key", flat=True))
    assert [len(b.split(",")) for b in batches] == [5, 5, 2]
    by_n = {j.payload["n"]: Job.objects.get(id=j.id) for j in jobs}
    assert by_n[13].status == JobStatus.DEAD and "unlucky" in by_n[13].errors[0]["message"]
    assert all(j.status == JobStatus.SUCCEEDED and j.result == n * 2 for n, j in by_n.items() if n != 13)


def test_progress_is_stored_while_the_job_runs():
    enqueue("test.noop", {})
    (job,) = engine.claim("w", 1)
    from jobs.api import JobContext

    JobContext(job=job, logger=None).progress(42)
    assert Job.objects.get(id=job.id).progress == 42


def test_prune_deletes_old_finished_jobs_and_keeps_dead_and_recent_ones():
    old_ok = enqueue("test.record", {"key": "old"})
    old_cancelled = enqueue("test.record", {"key": "old-c"})
    dead = enqueue("test.permanent", {"key": "dead"})
    recent = enqueue("test.record", {"key": "new"})
    cancel(old_cancelled.id)
    run_jobs()
    long_ago = timezone.now() - timedelta(days=8)
    Job.objects.filter(id__in=[old_ok.id, old_cancelled.id, dead.id]).update(finished_at=long_ago)
    pending = enqueue("test.record", {"key": "pending"}, delay=3600)
    assert prune(timedelta(days=7), batch_size=1) == 2
    assert set(Job.objects.values_list("id", flat=True)) == {dead.id, recent.id, pending.id}


def test_prune_unlinks_what_refers_to_a_pruned_job_as_its_on_delete_says():
    child = prepare("test.record", {"key": "child"})
    parent = enqueue("test.record", {"key": "parent"}, then=[child])
    run_jobs()
    AuditEntry.objects.create(actor="cli", action="retry", job=parent)
    schedule = CronSchedule.objects.get(name="cleanup_completed_jobs")
    CronSchedule.objects.filter(pk=schedule.pk).update(last_job=parent)
    Job.objects.filter(id=parent.id).update(finished_at=timezone.now() - timedelta(days=8))
    assert prune(timedelta(days=7)) == 1
    assert list(Job.objects.values_list("id", flat=True)) == [child.id]
    assert not JobDependency.objects.exists()  # CASCADE
    assert AuditEntry.objects.get(action="retry").job_id is None  # SET_NULL
    assert CronSchedule.objects.get(pk=schedule.pk).last_job_id is None  # SET_NULL, a related_name="+"


def test_prune_command_reports_is_audited_and_rejects_a_bad_age(capsys):
    call_command("jobs", "prune", "--older-than", "1d")
    assert "deleted 0 finished job(s)" in capsys.readouterr().out
    entry = AuditEntry.objects.get(action="prune")
    assert entry.actor.startswith("cli") and entry.details == "0 finished job(s) older than 1d"
    with pytest.raises(CommandError, match="invalid age"):
        call_command("jobs", "prune", "--older-than", "soon")
    assert AuditEntry.objects.filter(action="prune").count() == 1


def test_handler_effects_happen_once_when_the_same_job_runs_twice():
    job = enqueue("test.effect", {"key": "order-7"})
    run_jobs()
    # at-least-once delivery: the same job delivered again (e.g. its worker died before recording success)
    Job.objects.filter(id=job.id).update(status=JobStatus.PENDING, run_at=timezone.now())
    run_jobs()
    job.refresh_from_db()
    assert job.attempts == 2 and job.result == {"sent": False}
    assert sorted(Run.objects.values_list("key", flat=True)) == ["mail:order-7", "order-7"]


def test_cleanup_completed_jobs_is_a_built_in_daily_schedule(capsys):
    from jobs.models import CronSchedule

    schedule = CronSchedule.objects.get(name="cleanup_completed_jobs")
    assert (schedule.expression, schedule.job_type, schedule.enabled) == (
        "0 3 * * *",
        "cleanup_completed_jobs",
        True,
    )
    old = enqueue("test.record", {"key": "old"})
    run_jobs()
    Job.objects.filter(id=old.id).update(finished_at=timezone.now() - timedelta(days=30))
    from jobs.scheduler import run_now

    cleanup = run_now(schedule)
    run_jobs()
    cleanup.refresh_from_db()
    assert cleanup.result == {"deleted": 1} and not Job.objects.filter(id=old.id).exists()
