"""Circuit breakers with the engine in this process: the state transitions (closed, open, half-open, closed
again), what counts as a failure, the claim skipping held jobs and taking exactly one probe, a lost
probe, keys, staff closing one (command, admin), the alert and explain."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import alerts, db, engine, execution, staff
from jobs import explain as why
from jobs.api import Breaker, enqueue, enqueue_many, explain, job
from jobs.exceptions import UnknownJobType
from jobs.models import Alert, AuditEntry, BreakerState, Job, JobStatus
from jobs.registry import unregister
from jobs.testing import run_jobs
from tests.testapp.jobs import Key
from tests.testapp.models import Run

pytestmark = pytest.mark.django_db

OPEN, HALF_OPEN, CLOSED = BreakerState.State.OPEN, BreakerState.State.HALF_OPEN, BreakerState.State.CLOSED


@pytest.fixture
def flag(tmp_path):
    """The dependency is down while this file exists."""
    path = tmp_path / "down"
    path.write_text("down")
    return path


def down_jobs(flag, n: int, job_type: str = "test.breaker", **fields) -> list[Job]:
    return enqueue_many(job_type, [{"key": str(i), "flag": str(flag), **fields} for i in range(n)])


def run_one(worker: str = "w1") -> list[Job]:
    """Claim (at most one job) and run what was claimed; the claimed jobs."""
    claimed = engine.claim(worker, 1)
    for job_ in claimed:
        execution.run(job_)
    return claimed


def breaker(job_type: str = "test.breaker", key: str = "") -> BreakerState:
    return BreakerState.objects.get(type=job_type, key=key)


def end_cooldown(row: BreakerState) -> None:
    BreakerState.objects.filter(pk=row.pk).update(probe_at=db.now() - timedelta(seconds=1))


def trip(flag) -> list[Job]:
    """Three failures (the type's threshold) open test.breaker; returns the ten jobs."""
    jobs = down_jobs(flag, 10)
    for _ in range(3):
        assert run_one()
    assert breaker().state == OPEN
    return jobs


def test_failures_within_the_window_open_the_breaker_and_the_rest_wait_with_their_attempts(flag):
    jobs = down_jobs(flag, 10)
    run_one()
    run_one()
    assert breaker().state == CLOSED and len(breaker().failures) == 2
    run_one()
    row = breaker()
    assert row.state == OPEN and row.opened_at is not None
    assert row.probe_at >= row.opened_at + timedelta(seconds=3599)
    assert run_jobs() == 0  # nothing is claimed while it is open, however many are due
    attempts = dict(Job.objects.filter(id__in=[j.id for j in jobs]).values_list("id", "attempts"))
    assert sorted(attempts.values()) == [0] * 7 + [1] * 3
    assert set(Job.objects.filter(id__in=[j.id for j in jobs]).values_list("status", flat=True)) == {
        "pending"
    }
    assert Run.objects.count() == 3


def test_failures_older_than_the_window_are_forgotten(flag):
    down_jobs(flag, 5)
    run_one()
    run_one()
    stale = (db.now() - timedelta(seconds=61)).isoformat()
    BreakerState.objects.filter(type="test.breaker").update(failures=[stale, stale])
    run_one()
    row = breaker()
    assert row.state == CLOSED and len(row.failures) == 1


def test_after_the_cooldown_exactly_one_probe_is_claimed_and_its_failure_opens_the_breaker_again(flag):
    trip(flag)
    end_cooldown(breaker())
    claimed = engine.claim("w1", 10)
    assert len(claimed) == 1, "one probe, however many jobs the worker could take"
    row = breaker()
    assert row.state == HALF_OPEN and row.probe_job_id == claimed[0].id
    assert engine.claim("w2", 10) == []  # the probe is in flight: nobody takes another
    execution.run(claimed[0])
    row = breaker()
    assert row.state == OPEN and row.probe_job_id is None
    assert row.probe_at > db.now() + timedelta(seconds=3500)  # another full cooldown
    assert engine.claim("w1", 10) == []


def test_a_probe_that_succeeds_closes_the_breaker_and_the_rest_drain(flag):
    jobs = trip(flag)
    flag.unlink()
    end_cooldown(breaker())
    probe = engine.claim("w1", 10)
    assert len(probe) == 1
    execution.run(probe[0])
    row = breaker()
    assert row.state == CLOSED and row.failures == [] and row.probe_job_id is None
    run_jobs()
    statuses = set(Job.objects.filter(id__in=[j.id for j in jobs]).values_list("status", flat=True))
    assert statuses == {JobStatus.SUCCEEDED}


def test_a_probe_whose_worker_was_lost_leaves_the_slot_to_the_next_claim(flag):
    trip(flag)
    end_cooldown(breaker())
    (probe,) = engine.claim("w1", 10)
    Job.objects.filter(id=probe.id).update(heartbeat_at=db.now() - timedelta(seconds=600))
    assert engine.reap_stale(30) == [probe.id]
    assert breaker().state == HALF_OPEN
    again = engine.claim("w2", 10)
    assert len(again) == 1
    assert breaker().probe_job_id == again[0].id


def test_snoozes_cancellations_and_refused_payloads_do_not_count(flag):
    snoozing = down_jobs(flag, 5, snooze=True)
    for _ in range(5):
        run_one()
    assert not BreakerState.objects.filter(type="test.breaker").exists()
    assert Job.objects.filter(id__in=[j.id for j in snoozing], snoozes=1).count() == 5
    Job.objects.filter(type="test.breaker").update(status=JobStatus.CANCELLED)
    bad = enqueue("test.breaker", {"flag": str(flag)})
    Job.objects.filter(id=bad.id).update(payload={"flag": 3})  # no longer validates: dead at once
    run_one()
    assert Job.objects.get(id=bad.id).status == JobStatus.DEAD
    assert not BreakerState.objects.filter(type="test.breaker").exists()


def test_a_timeout_counts_as_a_failure():
    job("test.breaker_slow", payload=Key, breaker=Breaker(failures=1, window=60, cooldown=3600))(
        lambda payload, ctx: None
    )
    try:
        slow = enqueue("test.breaker_slow", {})
        (claimed,) = engine.claim("w1", 1)
        from jobs.exceptions import JobTimeout

        engine.fail(claimed, JobTimeout("handler ran longer than its timeout of 1s"))
        assert breaker("test.breaker_slow").state == OPEN
        assert Job.objects.get(id=slow.id).status == JobStatus.PENDING
    finally:
        unregister("test.breaker_slow")


def test_a_keyed_type_has_a_breaker_per_key_and_other_keys_keep_running(flag):
    down = enqueue_many("test.breaker_keyed", [{"key": "a", "flag": str(flag)} for _ in range(4)])
    up = enqueue_many("test.breaker_keyed", [{"key": "b", "flag": str(flag) + ".absent"} for _ in range(3)])
    for _ in range(4):  # fair share takes the keys in turn: two of a's fail among them
        claimed = engine.claim("w1", 1, types=["test.breaker_keyed"])
        execution.run(claimed[0])
        if Job.objects.filter(id__in=[j.id for j in down], attempts=1).count() == 2:
            break
    assert breaker("test.breaker_keyed", "endpoint:a").state == OPEN
    run_jobs()
    assert set(Job.objects.filter(id__in=[j.id for j in up]).values_list("status", flat=True)) == {
        "succeeded"
    }
    held = Job.objects.filter(id__in=[j.id for j in down], attempts=0)
    assert held.count() == 2 and set(held.values_list("status", flat=True)) == {"pending"}
    assert [r.code for r in explain(held.first())][0] == why.BREAKER_OPEN
    # The key's probe, after its cooldown: one job of that key only.
    end_cooldown(breaker("test.breaker_keyed", "endpoint:a"))
    probe = engine.claim("w1", 10)
    assert len(probe) == 1 and probe[0].concurrency_key == "endpoint:a"


def test_the_claim_adds_one_query_when_every_breaker_is_closed():
    enqueue("test.noop", {})
    with CaptureQueriesContext(connection) as queries:
        engine.claim("w1", 1)
    breaker_reads = [q for q in queries.captured_queries if "jobs_breakerstate" in q["sql"]]
    assert len(breaker_reads) == 1
    claim = [q for q in queries.captured_queries if "UPDATE" in q["sql"] and "jobs_job" in q["sql"]]
    assert claim and "concurrency_key <>" not in claim[0]["sql"]


def test_explain_names_the_open_breaker_and_when_it_probes(flag):
    jobs = trip(flag)
    waiting = Job.objects.filter(id__in=[j.id for j in jobs], attempts=0).first()
    reasons = explain(waiting)
    assert reasons[0].code == why.BREAKER_OPEN
    assert (
        "probes with one job at" in reasons[0].text and "jobs breaker close test.breaker" in reasons[0].text
    )
    staff.pause_type("cli", "test.breaker")
    assert [r.code for r in explain(waiting)][:2] == [why.TYPE_PAUSED, why.BREAKER_OPEN]


def test_an_open_breaker_raises_an_alert_closed_when_staff_close_it(flag, mailoutbox, settings):
    settings.JOBS_ALERT_EMAILS = "ops@example.com"
    trip(flag)
    changes = alerts.evaluate()
    assert [(a.kind, a.subject) for a in changes.opened] == [(Alert.Kind.BREAKER, "test.breaker")]
    assert any("test.breaker" in m.subject for m in mailoutbox)
    assert staff.close_breaker("cli:ops", "test.breaker") is True
    changes = alerts.evaluate()
    assert [(a.kind, a.subject) for a in changes.closed] == [(Alert.Kind.BREAKER, "test.breaker")]


def test_staff_close_a_breaker_from_the_command_audited(flag, capsys):
    trip(flag)
    call_command("jobs", "breakers")
    assert "breaker test.breaker open since" in capsys.readouterr().out
    call_command("jobs", "stats")
    assert "breaker test.breaker open" in capsys.readouterr().out
    call_command("jobs", "breaker", "close", "test.breaker")
    assert "breaker test.breaker closed" in capsys.readouterr().out
    assert breaker().state == CLOSED
    entry = AuditEntry.objects.get(action="close breaker")
    assert entry.target == "test.breaker" and entry.actor.startswith("cli")
    assert engine.claim("w1", 10)  # claimed again at once
    call_command("jobs", "breaker", "close", "test.breaker")
    assert "(it was not open)" in capsys.readouterr().out


def test_closing_a_breaker_of_an_unknown_type_or_one_without_a_breaker_is_an_error():
    with pytest.raises(CommandError, match="unknown job type 'nope'"):
        call_command("jobs", "breaker", "close", "nope")
    with pytest.raises(CommandError, match="declares no circuit breaker"):
        call_command("jobs", "breaker", "close", "test.noop")
    with pytest.raises(UnknownJobType):
        staff.close_breaker("cli", "nope")
    assert not AuditEntry.objects.exists()


def test_a_breaker_declaration_is_checked():
    with pytest.raises(ValueError, match="failures"):
        Breaker(failures=0)
    with pytest.raises(ValueError, match="cooldown"):
        Breaker(cooldown=0)
    with pytest.raises(TypeError, match="jobs.api.Breaker"):
        job("test.bad_breaker", payload=Key, breaker={"failures": 3})


def test_staff_close_one_keys_breaker_from_the_command(flag, capsys):
    enqueue_many("test.breaker_keyed", [{"key": "a", "flag": str(flag)} for _ in range(3)])
    for _ in range(2):
        execution.run(engine.claim("w1", 1)[0])
    assert breaker("test.breaker_keyed", "endpoint:a").state == OPEN
    call_command("jobs", "breaker", "close", "test.breaker_keyed", "--key", "endpoint:a")
    assert "breaker test.breaker_keyed [endpoint:a] closed" in capsys.readouterr().out
    assert breaker("test.breaker_keyed", "endpoint:a").state == CLOSED
    assert AuditEntry.objects.get(action="close breaker").details == "key endpoint:a"


def test_a_key_held_by_its_breaker_does_not_take_the_fair_share_turns_of_the_others(flag):
    # Keyed jobs are claimed round-robin across keys (jobs.fairshare): the held key, level with the
    # other in the rotation and first in claim order, must not be picked and then dropped by the claim
    # on every pass.
    down = enqueue_many("test.breaker_keyed", [{"key": "a", "flag": str(flag)} for _ in range(4)])
    up = enqueue_many("test.breaker_keyed", [{"key": "b", "flag": str(flag) + ".absent"} for _ in range(4)])
    first = engine.claim("w1", 4, types=["test.breaker_keyed"])
    assert sorted(job_.concurrency_key for job_ in first) == ["endpoint:a"] * 2 + ["endpoint:b"] * 2
    for job_ in first:
        execution.run(job_)
    assert breaker("test.breaker_keyed", "endpoint:a").state == OPEN
    claimed = engine.claim("w1", 1, types=["test.breaker_keyed"])
    assert [job_.id for job_ in claimed] == [up[2].id]
    assert Job.objects.filter(id__in=[j.id for j in down], status=JobStatus.PENDING, attempts=0).count() == 2
