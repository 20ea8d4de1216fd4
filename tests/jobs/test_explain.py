"""jobs.api.explain: the reasons a job is not running now, in order, read from the rows the claim
reads; live and busy workers are registered WorkerProcess rows."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import explain as why
from jobs import staff
from jobs.api import Reason, enqueue, explain
from jobs.models import Job, JobStatus, RateLimitStart
from jobs.registry import job, unregister
from tests.staff import factories
from tests.testapp.jobs import Key

pytestmark = pytest.mark.django_db


def codes(target) -> list[str]:
    return [r.code for r in explain(target)]


@pytest.fixture
def idle_worker():
    """A live worker serving every queue with a free thread: nothing on the workers' side holds a job."""
    return factories.worker("idle-1-abc", concurrency=2)


@pytest.fixture
def hourly_type():
    """A type allowed one start an hour: its window stays full for the whole test, however slow."""
    job("test.hourly", payload=Key, rate_limit="1/h")(lambda payload, ctx: None)
    yield "test.hourly"
    unregister("test.hourly")


def test_a_due_job_with_an_idle_worker_is_due_and_claimable(idle_worker):
    pending = enqueue("test.noop", {"key": "k"})
    reasons = explain(pending.pk)
    assert reasons == [Reason(why.DUE, reasons[0].text)] and "claimable" in reasons[0].text


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED])
def test_a_finished_job_is_not_waiting(status):
    done = factories.job(status=status, status_reason="by hand" if status == JobStatus.CANCELLED else "")
    (reason,) = explain(done)
    assert reason.code == why.FINISHED and status in reason.text


def test_a_running_job_is_not_waiting_and_names_its_worker():
    running = factories.job(status=JobStatus.RUNNING, locked_by="w-1", lock_token="t", attempts=1)
    (reason,) = explain(running)
    assert reason.code == why.RUNNING and "w-1" in reason.text


def test_an_expired_job_says_it_will_never_run_before_anything_else(idle_worker):
    stale = enqueue("test.noop", {"key": "k"}, expires_in=60)
    Job.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(seconds=5))
    reasons = explain(stale)
    assert [r.code for r in reasons] == [why.EXPIRED] and "never run" in reasons[0].text
    fresh = enqueue("test.noop", {"key": "k2"}, expires_in=3600)
    assert codes(fresh) == [why.DUE]


def test_a_job_due_later_names_its_run_at(idle_worker):
    later = enqueue("test.noop", {"key": "k"}, delay=3600)
    (reason,) = explain(later)
    assert reason.code == why.NOT_DUE and later.run_at.isoformat(timespec="seconds") in reason.text


def test_a_blocked_job_names_the_parents_it_waits_on(idle_worker):
    parent = enqueue("test.noop", {"key": "parent"})
    child = enqueue("test.noop", {"key": "child"}, depends_on=[parent])
    (reason,) = explain(child)
    assert reason.code == why.BLOCKED and f"#{parent.pk} (pending)" in reason.text


def test_a_job_of_a_paused_queue_says_so_and_who_paused_it(idle_worker):
    held = enqueue("test.noop", {"key": "k"}, queue="mail")
    staff.pause_queue(factories.operator("alice"), "mail")
    (reason,) = explain(held)
    assert reason.code == why.QUEUE_PAUSED and "mail" in reason.text and "alice" in reason.text


def test_a_job_of_a_paused_type_says_so_and_resuming_releases_it(idle_worker):
    held = enqueue("test.record", {"key": "k"})
    staff.pause_type("cli", "test.record")
    (reason,) = explain(held)
    assert reason.code == why.TYPE_PAUSED and "test.record" in reason.text
    staff.resume_type("cli", "test.record")
    assert codes(held) == [why.DUE]


def test_a_job_whose_type_used_up_its_rate_limit_waits_for_the_window(idle_worker, hourly_type):
    held = enqueue(hourly_type, {"key": "k"})
    assert codes(held) == [why.DUE]
    RateLimitStart.objects.create(type=hourly_type, started_at=timezone.now() - timedelta(minutes=10))
    (reason,) = explain(held)
    assert reason.code == why.RATE_LIMITED and "1/h" in reason.text
    assert re.search(r"next start is possible in about (49|50)m", reason.text), reason.text


def test_a_job_whose_concurrency_key_is_full_waits_for_it(idle_worker):
    factories.job(
        type="test.keyed",
        status=JobStatus.RUNNING,
        concurrency_key="group:g",
        concurrency_limit=1,
        locked_by="elsewhere",
        lock_token="t",
    )
    follower = enqueue("test.keyed", {"group": "g", "key": "second"})
    other_group = enqueue("test.keyed", {"group": "h", "key": "free"})
    (reason,) = explain(follower)
    assert reason.code == why.CONCURRENCY_KEY_FULL and "group:g" in reason.text
    assert codes(other_group) == [why.DUE]


def test_no_live_worker_serving_the_queue_is_named():
    pending = enqueue("test.noop", {"key": "k"}, queue="mail")
    assert codes(pending) == [why.NO_WORKER]
    factories.worker("stale-1-abc", heartbeat_seconds_ago=3600)  # dead: not heartbeating
    factories.worker("other-1-abc", queues=["reports"])  # alive, but not for this queue
    assert codes(pending) == [why.NO_WORKER]
    factories.worker("mail-1-abc", queues=["mail", "reports"])
    assert codes(pending) == [why.DUE]


def test_all_live_workers_busy_is_named_until_one_has_a_free_thread():
    worker = factories.worker("busy-1-abc", concurrency=1)
    factories.job(status=JobStatus.RUNNING, locked_by=worker.id, lock_token="t")
    pending = enqueue("test.noop", {"key": "k"})
    (reason,) = explain(pending)
    assert reason.code == why.WORKERS_BUSY and "1 running job(s), 1 thread(s)" in reason.text
    worker.concurrency = 2
    worker.save()
    assert codes(pending) == [why.DUE]


def test_reasons_come_in_order_every_one_that_holds_the_job():
    held = enqueue("test.noop", {"key": "k"}, queue="mail", delay=600)
    staff.pause_queue("cli", "mail")
    staff.pause_type("cli", "test.noop")
    assert codes(held) == [why.NOT_DUE, why.QUEUE_PAUSED, why.TYPE_PAUSED, why.NO_WORKER]


def test_explain_of_an_unknown_id_raises_does_not_exist():
    with pytest.raises(Job.DoesNotExist):
        explain(987654)


def test_a_reason_is_a_code_and_a_sentence():
    reason = Reason(why.DUE, "Due.")
    assert (reason.code, reason.text, str(reason)) == ("due", "Due.", "due: Due.")
