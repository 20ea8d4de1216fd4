"""The job engine's rules, exercised in-process against the real database."""

import re
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import api, db, engine, registry
from jobs.api import HIGH, LOW, InvalidPayload, UnknownJobType, enqueue, enqueue_many
from jobs.models import DeadLetter, Job, JobStatus
from jobs.testing import assert_enqueued, immediate, run_jobs
from tests.testapp.models import Run

pytestmark = pytest.mark.django_db


def test_enqueue_stores_validated_payload_with_type_defaults():
    job = enqueue("test.sleep", {"key": "a", "seconds": "1.5"})
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING
    assert job.payload == {"key": "a", "seconds": 1.5}
    assert job.queue == "default" and job.max_attempts == 5 and job.attempts == 0


def test_invalid_payload_raises_and_stores_nothing():
    with pytest.raises(InvalidPayload, match="seconds"):
        enqueue("test.sleep", {"key": "a"})
    assert Job.objects.count() == 0


def test_unknown_job_type_raises_and_stores_nothing():
    with pytest.raises(UnknownJobType, match="no.such.type"):
        enqueue("no.such.type", {})
    assert Job.objects.count() == 0


def test_rolled_back_transaction_leaves_no_job():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue("test.noop", {})
            raise RuntimeError("the order could not be saved")
    assert Job.objects.count() == 0


def test_enqueue_many_inserts_in_one_statement():
    with CaptureQueriesContext(connection) as queries:
        jobs = enqueue_many("test.record", [{"key": str(i)} for i in range(200)])
    inserts = [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1
    assert len(jobs) == 200 and Job.objects.filter(type="test.record").count() == 200


def test_bulk_insert_stores_each_jobs_own_values_whether_shared_or_not():
    from jobs import db

    base = timezone.now().replace(microsecond=123456)
    jobs = [
        Job(
            type="test.noop",
            queue=f"q{i % 2}",
            payload={"key": f"k{i}", "nested": {"n": i, "text": 'quote " and \\ backslash'}},
            payload_version=1,
            status=JobStatus.PENDING,
            priority=i,
            run_at=base + timedelta(seconds=i),
            max_attempts=3,
            created_at=base,
            concurrency_key=None if i % 2 else f"c{i}",
            concurrency_limit=None if i % 2 else 2,
        )
        for i in range(5)
    ]
    with transaction.atomic():
        ids = db.bulk_insert_jobs(jobs)
    assert ids == [j.pk for j in jobs] == sorted(ids)
    for job, row in zip(jobs, Job.objects.filter(id__in=ids).order_by("id"), strict=True):
        for name in ("type", "queue", "payload", "priority", "run_at", "max_attempts", "created_at"):
            assert getattr(row, name) == getattr(job, name), name
        assert (row.concurrency_key, row.concurrency_limit) == (job.concurrency_key, job.concurrency_limit)
        assert (row.status, row.attempts, row.errors, row.waiting_on) == (JobStatus.PENDING, 0, [], 0)


def test_enqueue_many_validates_every_payload_before_storing_any():
    with pytest.raises(InvalidPayload):
        enqueue_many("test.sleep", [{"seconds": 1}, {"seconds": "soon"}])
    assert Job.objects.count() == 0


def test_claim_takes_higher_priority_first_then_fifo():
    low = enqueue("test.noop", {"key": "low"}, priority=LOW)
    first = enqueue("test.noop", {"key": "1"})
    second = enqueue("test.noop", {"key": "2"})
    high = enqueue("test.noop", {"key": "high"}, priority=HIGH)
    order = [engine.claim("w", 1)[0].id for _ in range(4)]
    assert order == [high.id, first.id, second.id, low.id]


def test_delayed_job_is_not_claimed_before_its_time():
    job = enqueue("test.noop", {}, delay=timedelta(hours=1))
    assert engine.claim("w", 10) == []
    Job.objects.filter(id=job.id).update(run_at=timezone.now() - timedelta(seconds=1))
    assert [j.id for j in engine.claim("w", 10)] == [job.id]


def test_a_full_common_claim_on_postgresql_is_one_round_trip_and_a_short_one_ends_in_a_transaction():
    if not db.is_postgres():
        pytest.skip("a SQLite claim makes no round trip to a server")
    first = enqueue_many("test.noop", [{"key": str(i)} for i in range(4)])
    with CaptureQueriesContext(connection) as queries:
        claimed = engine.claim("w", 3)
    # the settings, the claim and the breakers' holds in one statement, and no BEGIN, COMMIT or savepoint
    assert len(queries.captured_queries) == 1, [q["sql"][:60] for q in queries.captured_queries]
    assert [j.id for j in claimed] == [j.id for j in first[:3]]
    assert all(j.status == JobStatus.RUNNING and j.locked_by == "w" and j.attempts == 1 for j in claimed)
    # An expired job ahead of the last one: the one-trip claim locks it and leaves it, comes back short,
    # and the claim transaction cancels it (descendants and all) before it takes the last job.
    past = timezone.now() - timedelta(seconds=10)
    expired = enqueue("test.noop", {"key": "late"}, run_at=past, expires_in=5, priority=HIGH)
    (last,) = engine.claim("w", 2)
    assert last.id == first[3].id
    expired.refresh_from_db()
    assert (expired.status, expired.status_reason, expired.attempts) == (JobStatus.CANCELLED, "expired", 0)


def test_a_claimed_jobs_timestamps_are_the_ones_the_orm_reads_to_the_microsecond_and_in_utc():
    run_at = timezone.now().replace(microsecond=123457) - timedelta(seconds=1)
    enqueue("test.noop", {}, run_at=run_at)
    (job,) = engine.claim("w", 1)
    stored = Job.objects.get(pk=job.pk)
    for name in ("run_at", "created_at", "started_at"):
        assert getattr(job, name) == getattr(stored, name), name
        assert (
            getattr(job, name).utcoffset() == timedelta(0)
            and getattr(job, name).tzinfo == stored.run_at.tzinfo
        )
    assert job.run_at == run_at and job.finished_at is None


def test_a_claimed_jobs_json_columns_and_flags_are_the_ones_the_orm_reads_each_its_own():
    enqueue_many("test.noop", [{"key": "a"}, {"key": "b"}])
    a, b = engine.claim("w", 2)
    for job in (a, b):
        stored = Job.objects.get(pk=job.pk)
        for name in (
            "payload",
            "errors",
            "trace_context",
            "cancel_requested",
            "status",
            "attempts",
            "priority",
        ):
            assert getattr(job, name) == getattr(stored, name), name
            assert type(getattr(job, name)) is type(getattr(stored, name)), name
    assert (a.payload, b.payload) == ({"key": "a"}, {"key": "b"})
    a.errors.append({"attempt": 1})  # the empty list of errors is not shared between jobs
    assert b.errors == []


def test_claim_marks_running_with_worker_and_token_and_counts_attempt():
    enqueue("test.noop", {})
    (job,) = engine.claim("worker-a", 5)
    assert job.status == JobStatus.RUNNING
    assert job.locked_by == "worker-a" and len(job.lock_token) == 32
    assert job.attempts == 1 and job.started_at and job.heartbeat_at


def test_a_claimed_job_reads_the_columns_it_was_not_claimed_with_in_one_query():
    enqueue("test.noop", {}, tags=["order:42"], meta={"shop": "x"}, expires_in=3600)
    (job,) = engine.claim("w", 1)
    with CaptureQueriesContext(connection) as queries:
        assert job.tags == ["order:42"] and job.meta == {"shop": "x"}
        assert job.expires_at and job.heartbeat_at and job.result is None
    assert len(queries.captured_queries) == 1
    assert job.payload == {"key": ""} and job.locked_by == "w" and job.attempts == 1


def test_a_claimed_job_is_built_through_model_init_when_init_signals_have_receivers():
    from django.db.models.signals import post_init

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((instance.payload, instance.locked_by))

    enqueue("test.noop", {"key": "a"})
    post_init.connect(receiver, sender=Job)
    try:
        (job,) = engine.claim("w", 1)
    finally:
        post_init.disconnect(receiver, sender=Job)
    assert seen == [({"key": "a"}, "w")]
    assert job.payload == {"key": "a"} and job.attempts == 1 and job.tags == []


def test_claim_respects_queues():
    enqueue("test.noop", {}, queue="email")
    other = enqueue("test.noop", {}, queue="reports")
    assert [j.id for j in engine.claim("w", 10, ["reports"])] == [other.id]


def test_handler_result_is_stored():
    job = enqueue("test.sleep", {"key": "r", "seconds": 0})
    assert run_jobs() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"slept": 0.0}
    assert job.finished_at and job.lock_token is None


def test_failed_attempts_back_off_exponentially_then_die_with_whole_history():
    job = enqueue("test.flaky", {"key": "f", "failures": 10})
    delays = []
    for attempt in range(1, 5):
        (claimed,) = engine.claim("w", 1)
        assert claimed.attempts == attempt
        before = timezone.now()
        from jobs.execution import run

        run(claimed)
        after = timezone.now()
        job.refresh_from_db()
        if attempt < 4:
            assert job.status == JobStatus.PENDING
            # the failure was recorded between before and after: its delay lies between these
            delays.append(((job.run_at - after).total_seconds(), (job.run_at - before).total_seconds()))
            Job.objects.filter(id=job.id).update(run_at=timezone.now())
    # base 0.01 s, doubling, capped at 0.05 s, no jitter for this type
    for (least, most), expected in zip(delays, [0.01, 0.02, 0.04], strict=True):
        assert least - 1e-6 <= expected <= most + 1e-6, (delays, expected)
    assert job.status == JobStatus.DEAD
    dead = DeadLetter.objects.get(job=job)
    assert dead.attempts == 4
    assert [e["attempt"] for e in dead.errors] == [1, 2, 3, 4]
    assert all("RuntimeError" in e["exception"] and "Traceback" in e["traceback"] for e in dead.errors)
    assert dead.error_class == "builtins.RuntimeError"


def test_backoff_has_jitter_and_a_cap():
    backoff = registry.Backoff(base=10, cap=60, jitter=0.5)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        delays = [backoff.delay(attempt).total_seconds() for _ in range(50)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_flaky_job_succeeds_on_a_later_attempt():
    job = enqueue("test.flaky", {"key": "f", "failures": 2})
    for _ in range(3):
        Job.objects.filter(id=job.id).update(run_at=timezone.now())
        run_jobs()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 3 and len(job.errors) == 2


def test_permanent_error_goes_to_dead_letters_at_once():
    job = enqueue("test.permanent", {"key": "p"})
    run_jobs()
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1
    assert DeadLetter.objects.get(job=job).error_class == "jobs.exceptions.PermanentError"


def test_job_of_unregistered_type_goes_to_dead_letters_without_retries():
    job = enqueue("test.noop", {})
    saved = registry.get_job_type("test.noop")
    registry.unregister("test.noop")
    try:
        run_jobs()
    finally:
        registry._registry["test.noop"] = saved
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1
    assert "UnknownJobType" in DeadLetter.objects.get(job=job).error_class


def test_stored_payload_that_no_longer_validates_goes_to_dead_letters_without_retries():
    job = enqueue("test.sleep", {"seconds": 1})
    Job.objects.filter(id=job.id).update(payload={"seconds": "not a number"})
    run_jobs()
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1
    assert Run.objects.count() == 0
    assert "InvalidPayload" in DeadLetter.objects.get(job=job).error_class


def test_completion_with_a_stale_lock_token_changes_nothing():
    enqueue("test.noop", {})
    (first,) = engine.claim("worker-a", 1)
    # worker-a went silent; the reaper hands the job back and worker-b claims it
    Job.objects.filter(id=first.id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert engine.reap_stale(30) == [first.id]
    (second,) = engine.claim("worker-b", 1)
    assert second.id == first.id and second.lock_token != first.lock_token
    assert engine.complete(first, {"from": "a"}) is False
    assert engine.fail(first, RuntimeError("late")) is None
    row = Job.objects.get(id=first.id)
    assert row.status == JobStatus.RUNNING and row.locked_by == "worker-b" and row.result is None
    assert engine.complete(second, {"from": "b"}) is True
    assert Job.objects.get(id=first.id).result == {"from": "b"}


def test_batched_completion_records_only_its_own_claims_among_many_running():
    enqueue_many("test.noop", [{"key": str(i)} for i in range(400)])
    mine = engine.claim("worker-a", 100)
    others = engine.claim("worker-b", 300)
    stale = others[0]
    stale.lock_token = "not-the-token"
    cancelled = others[1]
    Job.objects.filter(id=cancelled.id).update(cancel_requested=True)
    done = engine.complete_many([(job, {"n": job.id}) for job in [*mine, stale]])
    assert done == {job.id for job in mine}
    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 100
    assert all(j.result == {"n": j.id} for j in Job.objects.filter(status=JobStatus.SUCCEEDED))
    assert Job.objects.get(id=stale.id).status == JobStatus.RUNNING
    assert engine.complete_many([(cancelled, "late")]) == {cancelled.id}
    assert Job.objects.get(id=cancelled.id).status == JobStatus.CANCELLED


@pytest.mark.skipif(
    "__import__('jobs.db').db.is_postgres()",
    reason="SQLite's planner has no statistics here; PostgreSQL's picks its join by cost",
)
def test_batched_completion_looks_jobs_up_by_id_not_through_every_running_job():
    from jobs import db

    sql, params = db.complete_sql([(1, "t", None), (2, "t", None)], timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = [row[3] for row in cursor.fetchall()]
    assert plan[0].startswith("SCAN json_each"), plan
    assert "USING INTEGER PRIMARY KEY" in plan[1], plan


@pytest.mark.parametrize(
    "lookup",
    [
        {"unique_key__in": ["order:1:invoice", "order:1:inventory"]},  # an order's pipeline, any status
        {"unique_key": "order:1:invoice", "status__in": ["blocked", "pending", "running"]},  # enqueue
    ],
)
def test_jobs_are_found_by_unique_key_through_an_index(lookup):
    sql, params = Job.objects.filter(**lookup).query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A tiny test table would be scanned anyway; the question is whether an index can serve.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql, params)
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "jobs_job_unique_key_idx" in plan or "jobs_job_unique_active_key" in plan, plan
    assert "Seq Scan" not in plan and "SCAN jobs_job" not in plan, plan


def test_reaper_counts_the_lost_attempt_and_buries_the_last_one():
    job = enqueue("test.suicide", {})  # max_attempts=2
    for expected in (JobStatus.PENDING, JobStatus.DEAD):
        (claimed,) = engine.claim("w", 1)
        Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
        engine.reap_stale(30)
        job.refresh_from_db()
        assert job.status == expected
    assert [e["exception"] for e in job.errors] == ["jobs.exceptions.WorkerLost"] * 2


def test_release_hands_a_claimed_job_back_without_counting_the_attempt():
    job = enqueue("test.noop", {})
    claimed = engine.claim("w", 1)
    assert engine.release(claimed, "shutdown") == 1
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.attempts == 0 and job.locked_by is None


def test_requeue_dead_letter_creates_one_fresh_job_linked_to_it():
    job = enqueue("test.permanent", {"key": "x"})
    run_jobs()
    dead = DeadLetter.objects.get(job=job)
    fresh = api.requeue(dead.id)
    assert fresh.status == JobStatus.PENDING and fresh.requeued_from_id == dead.id and fresh.attempts == 0
    assert api.requeue(dead.id) is None
    assert Job.objects.filter(type="test.permanent").count() == 2


def test_run_jobs_and_assert_enqueued_helpers():
    enqueue("test.record", {"key": "one"})
    enqueue("test.record", {"key": "two"})
    assert assert_enqueued("test.record", key="two").payload == {"key": "two"}
    with pytest.raises(AssertionError, match="expected a job 'test.record'"):
        assert_enqueued("test.record", key="three")
    assert run_jobs() == 2
    assert sorted(Run.objects.values_list("key", flat=True)) == ["one", "two"]


def test_immediate_mode_runs_jobs_at_enqueue():
    with immediate():
        job = enqueue("test.record", {"key": "now"})
    assert job.status == JobStatus.SUCCEEDED
    assert Run.objects.get().key == "now"


def test_handler_context_carries_job_id_and_attempt():
    job = enqueue("test.record", {"key": "ctx"})
    run_jobs()
    run = Run.objects.get()
    assert (run.job_id, run.attempt) == (job.id, 1)


def test_immediate_mode_records_a_handlers_system_exit_as_its_failure_instead_of_exiting():
    with immediate():
        job = enqueue("test.raises", {"key": "x", "kind": "SystemExit"}, max_attempts=1)
    assert job.status == JobStatus.DEAD and job.attempts == 1
    assert job.errors[0]["exception"] == "builtins.SystemExit"
    assert "SystemExit: 3" in job.errors[0]["traceback"]
    assert DeadLetter.objects.get(job=job).error_class == "builtins.SystemExit"


def test_immediate_mode_records_a_handlers_keyboard_interrupt_as_its_failure_not_an_exit():
    with immediate():
        job = enqueue("test.raises", {"key": "x", "kind": "KeyboardInterrupt"}, max_attempts=1)
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD
    assert [e["exception"] for e in job.errors] == ["builtins.KeyboardInterrupt"]


def test_the_claim_walks_the_pending_jobs_index():
    """The hottest statement: its candidate rows come from the partial index over pending jobs (in
    claim order), never from a scan of the table, however many finished rows it holds."""
    with transaction.atomic():
        now = db.prepare_claim()  # the claim's own planner settings, as the engine runs it
        sql, params = db.claim_sql(worker_id="w", token="t", now=now, limit=10, queues=["default"])
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table would be scanned anyway
                cursor.execute("EXPLAIN " + sql, params)
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    if connection.vendor == "postgresql":
        assert "Index Scan using jobs_job_claim_idx on jobs_job j" in plan, plan
        # the job table itself (the small state tables of paused queues and types may be scanned)
        assert not re.search(r"Seq Scan on jobs_job\b", plan) and "Sort" not in plan, plan
    else:
        # SCAN of the partial index: it holds only pending jobs, already in claim order (no sort)
        assert "SCAN j USING INDEX jobs_job_claim_idx" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_a_sqlite_database_without_immediate_transactions_fails_the_system_check():
    from django.core import checks as django_checks

    from jobs.checks import check_sqlite_transaction_mode, sqlite_mode_errors

    assert check_sqlite_transaction_mode in django_checks.registry.registry.get_checks()  # every command
    assert check_sqlite_transaction_mode() == []  # the project's settings, on either database
    databases = {
        "default": {"ENGINE": "shop.backends.sqlite3", "OPTIONS": {"transaction_mode": "IMMEDIATE"}},
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3", "OPTIONS": {}},
        "pg": {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {}},
    }
    (error,) = sqlite_mode_errors(databases)
    assert error.id == "jobs.E001" and error.level == django_checks.ERROR
    assert "'other' begins its transactions DEFERRED" in error.msg
