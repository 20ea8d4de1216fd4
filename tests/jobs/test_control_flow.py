"""Handler control flow: Snooze (run later without using an attempt), expiry (never run late), and the
tags and metadata staff find jobs by. In-process first, then with real `runworker` processes."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import db
from jobs.api import Snooze, enqueue, enqueue_many, prepare, run_now
from jobs.models import DeadLetter, Job, JobStatus
from jobs.testing import immediate, run_jobs
from tests.testapp.models import Run
from tests.utils import wait_for

# -- snooze -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("returned", [False, True], ids=["raised", "returned"])
def test_a_snoozed_job_keeps_its_attempt_and_is_due_after_the_delay(returned):
    job = enqueue("test.snoozy", {"key": "s", "times": 1, "seconds": 30, "returned": returned})
    before = db.now()
    assert run_jobs() == 1
    job.refresh_from_db()
    assert (job.status, job.attempts, job.snoozes, job.errors) == (JobStatus.PENDING, 0, 1, [])
    assert job.status_reason == "snoozed for 30s" and job.locked_by is None
    assert before + timedelta(seconds=29) < job.run_at <= db.now() + timedelta(seconds=30)
    assert run_jobs() == 0  # not due before its delay
    run_now(job.id)
    assert run_jobs() == 1
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (JobStatus.SUCCEEDED, 1, {"attempt": 1})
    assert list(Run.objects.filter(job_id=job.id).values_list("attempt", flat=True)) == [1, 1]


@pytest.mark.django_db
def test_snoozing_past_max_snoozes_counts_as_a_failed_attempt_with_a_clear_error():
    job = enqueue("test.snoozy", {"key": "s", "times": 100, "seconds": 0})  # max_snoozes=3, 2 attempts
    for _ in range(10):
        run_now(job.id)
        run_jobs()
        job.refresh_from_db()
        if job.status == JobStatus.DEAD:
            break
    assert (job.status, job.attempts, job.snoozes) == (JobStatus.DEAD, 2, 3)
    assert [e["exception"] for e in job.errors] == ["jobs.exceptions.SnoozeLimitExceeded"] * 2
    assert "max_snoozes=3" in job.errors[0]["message"]
    assert DeadLetter.objects.get(job=job).error_class == "jobs.exceptions.SnoozeLimitExceeded"
    assert Run.objects.filter(job_id=job.id).count() == 3 + 2  # three free snoozes, then two attempts


@pytest.mark.django_db
def test_a_snooze_in_immediate_mode_leaves_the_job_waiting_without_using_an_attempt():
    with immediate():
        job = enqueue("test.snoozy", {"key": "i", "times": 1, "seconds": 60})
    assert (job.status, job.attempts, job.snoozes) == (JobStatus.PENDING, 0, 1)
    assert job.run_at > timezone.now() + timedelta(seconds=50)


def test_snooze_takes_seconds_or_a_timedelta_and_refuses_a_negative_delay():
    assert Snooze(timedelta(minutes=2)).seconds == 120.0
    assert Snooze(1.5).seconds == 1.5
    with pytest.raises(ValueError):
        Snooze(-1)


# -- expiry -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_expired_job_is_cancelled_by_the_claim_and_never_runs_while_an_unexpired_one_runs():
    past = timezone.now() - timedelta(seconds=10)
    expired = enqueue("test.record", {"key": "late"}, run_at=past, expires_in=5)
    child = prepare("test.record", {"key": "child"})
    parent = enqueue(
        "test.record", {"key": "parent"}, run_at=past, expires_in=timedelta(seconds=5), then=child
    )
    fresh = enqueue("test.record", {"key": "fresh"}, run_at=past, expires_in=3600)
    run_jobs()
    for job in (expired, parent, child, fresh):
        job.refresh_from_db()
    assert (expired.status, expired.status_reason, expired.attempts) == (JobStatus.CANCELLED, "expired", 0)
    assert expired.finished_at is not None and expired.started_at is None and expired.locked_by is None
    assert (parent.status, parent.status_reason) == (JobStatus.CANCELLED, "expired")
    assert (child.status, child.status_reason) == (JobStatus.CANCELLED, f"parent job #{parent.id} expired")
    assert fresh.status == JobStatus.SUCCEEDED
    assert set(Run.objects.values_list("key", flat=True)) == {"fresh"}


@pytest.mark.django_db
def test_expiry_counts_from_when_the_job_is_due_and_job_types_declare_a_default():
    job = enqueue("test.record", {"key": "d"}, delay=3600, expires_in=60)
    assert job.expires_at == job.run_at + timedelta(seconds=60)
    assert enqueue("test.record", {"key": "n"}).expires_at is None
    followup = enqueue("send_followup_email", {"order_id": 1}, delay=86400)
    assert followup.expires_at == followup.run_at + timedelta(days=2)
    (bulk,) = enqueue_many("test.record", [{"key": "b"}], expires_in=30)
    assert Job.objects.get(id=bulk.id).expires_at == bulk.run_at + timedelta(seconds=30)
    with pytest.raises(ValueError):
        enqueue("test.record", {"key": "x"}, expires_in=0)


# -- tags and metadata --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tags_and_meta_are_stored_by_enqueue_and_enqueue_many():
    one = enqueue("test.record", {"key": "a"}, tags=["order:42", "vip", "order:42"], meta={"by": "ada"})
    many = enqueue_many(
        "test.record", [{"key": str(i)} for i in range(3)], tags=["import:7"], meta={"rows": 3, "at": None}
    )
    keyed = enqueue("test.record", {"key": "k"}, unique_key="k", tags=["order:43"])
    stored = Job.objects.get(id=one.id)
    assert (stored.tags, stored.meta) == (["order:42", "vip"], {"by": "ada"})
    assert [(j.tags, j.meta) for j in Job.objects.filter(id__in=[j.id for j in many]).order_by("id")] == [
        (["import:7"], {"rows": 3, "at": None})
    ] * 3
    assert Job.objects.get(id=keyed.id).tags == ["order:43"]
    assert Job.objects.get(id=enqueue("test.record", {"key": "plain"}).id).tags == []
    with pytest.raises(TypeError):
        enqueue("test.record", {"key": "s"}, tags="order:42")
    with pytest.raises(ValueError):
        enqueue("test.record", {"key": "e"}, tags=[""])


@pytest.mark.django_db
def test_a_requeued_dead_letter_keeps_its_tags_and_meta():
    from jobs.api import requeue

    job = enqueue("test.permanent", {"key": "p"}, tags=["order:9"], meta={"why": "test"})
    run_jobs()
    fresh = requeue(DeadLetter.objects.get(job=job).id)
    assert (fresh.tags, fresh.meta) == (["order:9"], {"why": "test"})


@pytest.mark.django_db
def test_tagged_finds_the_jobs_carrying_a_tag_exactly():
    a = enqueue("test.record", {"key": "a"}, tags=["order:42", "vip"])
    enqueue("test.record", {"key": "b"}, tags=["order:421"])
    enqueue_many("test.record", [{"key": "c"}], tags=["order:4"])
    assert list(Job.objects.filter(db.tagged("order:42")).values_list("id", flat=True)) == [a.id]


@pytest.mark.django_db
def test_the_tag_filter_reads_the_tag_index_on_postgresql():
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no index over a JSON array's members")
    sql, params = Job.objects.filter(db.tagged("order:42")).query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table would be scanned anyway
        cursor.execute("EXPLAIN " + sql, params)
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "jobs_job_tags_idx" in plan, plan


# -- real worker processes ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_snoozed_job_again_after_the_delay_on_the_same_attempt(workers):
    job = enqueue("test.snoozy", {"key": "w", "times": 2, "seconds": 0.5})
    proc = workers.start("--concurrency", "2")
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=30, message="done")
    job.refresh_from_db()
    assert (job.attempts, job.snoozes, job.errors, job.result) == (1, 2, [], {"attempt": 1})
    runs = list(Run.objects.filter(job_id=job.id).order_by("id"))
    assert [r.attempt for r in runs] == [1, 1, 1]
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in zip(runs, runs[1:], strict=False)]
    assert all(gap >= 0.45 for gap in gaps), gaps
    assert f"job {job.id} test.snoozy attempt 1: snoozed for 0.5s" in workers.output(proc)
    proc.terminate()
    assert proc.wait(20) == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_fails_a_job_that_snoozes_past_max_snoozes(workers):
    job = enqueue("test.snoozy", {"key": "m", "times": 100, "seconds": 0.05})
    proc = workers.start()
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.DEAD, timeout=30, message="dead")
    job.refresh_from_db()
    assert (job.attempts, job.snoozes) == (2, 3)
    assert [e["exception"] for e in job.errors] == ["jobs.exceptions.SnoozeLimitExceeded"] * 2
    assert Run.objects.filter(job_id=job.id).count() == 5
    proc.terminate()
    assert proc.wait(20) == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_never_runs_an_expired_job_and_runs_the_unexpired_one(workers):
    expired = enqueue("test.record", {"key": "expired"}, expires_in=0.2)
    fresh = enqueue("test.record", {"key": "fresh"}, expires_in=3600)
    wait_for(lambda: db.now() > expired.expires_at, message="the first job's expiry passed")
    proc = workers.start("--burst")
    assert workers.exit_code(proc, 60) == 0, workers.output(proc)
    expired.refresh_from_db()
    fresh.refresh_from_db()
    assert (expired.status, expired.status_reason, expired.attempts) == (JobStatus.CANCELLED, "expired", 0)
    assert fresh.status == JobStatus.SUCCEEDED
    assert list(Run.objects.values_list("key", flat=True)) == ["fresh"]
