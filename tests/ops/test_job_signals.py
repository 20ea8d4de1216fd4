"""The job lifecycle signals: sent by the engine with the job and its outcome, in the order they
happen, whoever runs the job."""

import pytest

from jobs import signals
from jobs.api import enqueue, enqueue_many
from jobs.models import Job
from jobs.testing import run_jobs

pytestmark = pytest.mark.django_db


@pytest.fixture
def heard():
    events = []

    def listen(signal_name):
        def receiver(sender, job, **kwargs):
            events.append(
                (signal_name, job.type, job.attempts, {k: v for k, v in kwargs.items() if k != "signal"})
            )

        return receiver

    receivers = {name: listen(name) for name in ("enqueued", "started", "succeeded", "failed", "dead")}
    for name, fn in receivers.items():
        getattr(signals, f"job_{name}").connect(fn, sender=Job)
    yield events
    for name, fn in receivers.items():
        getattr(signals, f"job_{name}").disconnect(fn, sender=Job)


def test_a_succeeding_job_is_enqueued_started_and_succeeded(heard):
    job = enqueue("test.flaky", {"failures": 0})
    run_jobs()
    assert [(e[0], e[1]) for e in heard] == [
        ("enqueued", "test.flaky"),
        ("started", "test.flaky"),
        ("succeeded", "test.flaky"),
    ]
    assert heard[-1][3] == {"result": "ok"}
    assert Job.objects.get(id=job.id).status == "succeeded"


def test_a_failing_job_sends_failed_per_retried_attempt_and_dead_once(heard):
    enqueue("test.flaky", {"failures": 5}, max_attempts=2)
    run_jobs()
    Job.objects.update(run_at=Job.objects.get().created_at)  # the retry is due now
    run_jobs()
    outcomes = [(e[0], e[2]) for e in heard if e[0] in ("failed", "dead")]
    assert outcomes == [("failed", 1), ("dead", 2)]
    assert heard[-1][3]["error"].__class__.__name__ == "RuntimeError"
    assert [e[3].get("will_retry") for e in heard if e[0] == "failed"] == [True]


def test_enqueue_many_sends_enqueued_per_job(heard):
    jobs = enqueue_many("test.noop", [{"key": str(i)} for i in range(3)])
    assert [e[0] for e in heard] == ["enqueued"] * 3
    assert len(jobs) == 3


def test_a_receiver_that_raises_does_not_disturb_the_job(caplog):
    def broken(sender, job, **kwargs):
        raise ValueError("receiver bug")

    signals.job_started.connect(broken, sender=Job)
    try:
        job = enqueue("test.noop", {})
        run_jobs()
    finally:
        signals.job_started.disconnect(broken, sender=Job)
    assert Job.objects.get(id=job.id).status == "succeeded"
    assert "receiver bug" in caplog.text


def test_receivers_are_looked_up_again_after_connect_and_disconnect():
    """The receivers a lifecycle signal keeps for its sender (looked up once, not on every send) follow
    connect and disconnect, and a weakly connected receiver that was collected is skipped."""
    import gc

    calls = []
    job = Job(id=1, type="test.noop")

    def first(sender, job, **kwargs):
        calls.append("first")

    class Listener:
        def method(self, sender, job, **kwargs):
            calls.append("weak")

    signals.send(signals.job_snoozed, job, seconds=1)  # looked up: none
    signals.job_snoozed.connect(first, sender=Job)
    listener = Listener()
    signals.job_snoozed.connect(listener.method, sender=Job)  # weak by default
    try:
        signals.send(signals.job_snoozed, job, seconds=1)
        assert calls == ["first", "weak"]
        del listener
        gc.collect()
        signals.send(signals.job_snoozed, job, seconds=1)
        assert calls == ["first", "weak", "first"]
    finally:
        signals.job_snoozed.disconnect(first, sender=Job)
    signals.send(signals.job_snoozed, job, seconds=1)
    assert calls == ["first", "weak", "first"]


def test_an_async_receiver_is_awaited():
    calls = []

    async def receiver(sender, job, **kwargs):
        calls.append(job.id)

    signals.job_snoozed.connect(receiver, sender=Job)
    try:
        signals.send(signals.job_snoozed, Job(id=7, type="test.noop"), seconds=1)
    finally:
        signals.job_snoozed.disconnect(receiver, sender=Job)
    assert calls == [7]
