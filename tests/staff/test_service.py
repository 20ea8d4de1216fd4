"""jobs.staff: every staff operation goes through the engine and leaves an audit entry."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import staff
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import AuditEntry, CronSchedule, DeadLetter, Job, JobStatus, JobTypeState, QueueState
from jobs.testing import run_jobs
from tests.staff import factories

pytestmark = pytest.mark.django_db


def test_retry_of_a_waiting_job_makes_it_due_now_and_audits_the_user():
    later = timezone.now() + timedelta(hours=1)
    job = factories.job(status=JobStatus.PENDING, run_at=later)
    alice = factories.operator("alice")
    outcome = staff.retry(alice, [job.pk])
    job.refresh_from_db()
    assert outcome.done == [job.pk] and job.run_at <= timezone.now()
    entry = AuditEntry.objects.get(job=job)
    assert (entry.user, entry.actor, entry.action) == (alice, "alice", "retry")


def test_retry_of_a_dead_job_requeues_its_dead_letter_once():
    job, dead = factories.dead_job()
    first = staff.retry("cli", [job.pk])
    second = staff.retry("cli", [job.pk])
    assert len(first.created) == 1 and second.done == []
    assert "already requeued" in second.skipped[0][1]
    dead.refresh_from_db()
    assert dead.requeued_job == first.created[0] and dead.requeued_job.requeued_from == dead
    assert Job.objects.filter(requeued_from=dead).count() == 1


def test_retry_leaves_running_and_finished_jobs_alone():
    running = factories.job(status=JobStatus.RUNNING, locked_by="w1", lock_token="t")
    done = factories.job(status=JobStatus.SUCCEEDED)
    outcome = staff.retry("cli", [running.pk, done.pk])
    assert outcome.done == [] and [pk for pk, _ in outcome.skipped] == [running.pk, done.pk]
    assert not AuditEntry.objects.exists()


def test_requeue_twice_enqueues_one_job():
    _, dead = factories.dead_job()
    staff.requeue("cli", [dead.pk])
    outcome = staff.requeue("cli", [dead.pk])
    assert outcome.done == [] and Job.objects.filter(requeued_from=dead).count() == 1
    assert AuditEntry.objects.filter(dead_letter=dead, action="requeue").count() == 1


def test_requeue_type_requeues_only_open_dead_letters_of_that_type():
    _, a = factories.dead_job(payload={"key": "a"})
    _, b = factories.dead_job(payload={"key": "b"})
    other = factories.stale_dead_letter()
    staff.discard("cli", [b.pk], "customer asked")
    outcome = staff.requeue_type("cli", "test.permanent")
    assert outcome.done == [a.pk]
    other.refresh_from_db()
    assert other.is_open


def test_edit_and_requeue_validates_the_payload_and_keeps_the_old_one_in_the_audit():
    dead = factories.stale_dead_letter(payload={"key": "old"})
    with pytest.raises(InvalidPayload, match="seconds"):
        staff.edit_and_requeue("cli", dead.pk, {"key": "old", "seconds": "soon"})
    dead.refresh_from_db()
    assert dead.is_open and not AuditEntry.objects.exists()
    new = staff.edit_and_requeue("cli", dead.pk, {"key": "fixed", "seconds": 0})
    assert new.payload == {"key": "fixed", "seconds": 0.0} and new.status == JobStatus.PENDING
    edit = AuditEntry.objects.get(dead_letter=dead, action="edit")
    assert '"key": "old"' in edit.details


def test_discard_needs_a_reason_and_records_who():
    _, dead = factories.dead_job()
    bob = factories.operator("bob")
    with pytest.raises(ValueError, match="reason"):
        staff.discard(bob, [dead.pk], "  ")
    staff.discard(bob, [dead.pk], "duplicate order, refunded by hand")
    dead.refresh_from_db()
    assert dead.discarded_by == bob and dead.discard_reason == "duplicate order, refunded by hand"
    assert staff.requeue(bob, [dead.pk]).done == []


def test_cancel_pending_at_once_and_running_by_request():
    pending = factories.job(status=JobStatus.PENDING)
    running = factories.job(status=JobStatus.RUNNING, locked_by="w1", lock_token="t")
    staff.cancel("cli", [pending.pk, running.pk], reason="wrong address")
    pending.refresh_from_db()
    running.refresh_from_db()
    assert pending.status == JobStatus.CANCELLED and pending.status_reason == "wrong address"
    assert running.status == JobStatus.RUNNING and running.cancel_requested
    assert AuditEntry.objects.filter(action="cancel").count() == 2


def test_priority_changes_only_for_jobs_not_yet_claimed():
    pending = factories.job(status=JobStatus.PENDING, priority=0)
    running = factories.job(status=JobStatus.RUNNING, priority=0, locked_by="w1", lock_token="t")
    outcome = staff.set_priority("cli", [pending.pk, running.pk], 20)
    assert outcome.done == [pending.pk]
    assert Job.objects.get(pk=pending.pk).priority == 20 and Job.objects.get(pk=running.pk).priority == 0


def test_paused_queue_is_not_claimed_until_resumed():
    job = factories.job(type="test.noop", status=JobStatus.PENDING)
    assert staff.pause_queue("cli", "default") is True
    assert run_jobs() == 0
    assert QueueState.objects.get(name="default").paused
    staff.resume_queue("cli", "default")
    assert run_jobs() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert list(AuditEntry.objects.order_by("at").values_list("action", "target")) == [
        ("pause", "default"),
        ("resume", "default"),
    ]


def test_run_schedule_enqueues_and_records_the_last_run():
    schedule = CronSchedule.objects.create(name="nightly", expression="0 3 * * *", job_type="test.noop")
    job = staff.run_schedule("cli", schedule)
    schedule.refresh_from_db()
    assert schedule.last_job == job and AuditEntry.objects.get(action="run_schedule").target == "nightly"


def test_disabling_and_enabling_a_schedule_recomputes_its_next_run():
    past = timezone.now() - timedelta(days=3)
    schedule = CronSchedule.objects.create(
        name="nightly", expression="0 3 * * *", job_type="test.noop", enabled=False, next_run_at=past
    )
    staff.set_schedule_enabled("cli", [schedule], True)
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at > timezone.now()


def test_dead_letter_count_is_unchanged_by_staff_reads():
    factories.dead_job()
    assert DeadLetter.objects.count() == 1


def test_requeue_skips_a_dead_letter_whose_payload_no_longer_validates():
    dead = factories.stale_dead_letter(payload={"key": "old"})
    outcome = staff.requeue("cli", [dead.pk])
    assert outcome.done == [] and "seconds" in outcome.skipped[0][1]
    dead.refresh_from_db()
    assert dead.is_open and not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    "operation",
    [
        lambda job: staff.retry("cli", [job.pk]),
        lambda job: staff.run_now("cli", [job.pk]),
        lambda job: staff.cancel("cli", [job.pk], "no longer wanted"),
        lambda job: staff.set_priority("cli", [job.pk], 50),
    ],
    ids=["retry", "run_now", "cancel", "set_priority"],
)
def test_an_operation_whose_audit_row_cannot_be_written_changes_nothing(operation, monkeypatch):
    later = timezone.now() + timedelta(hours=1)
    job = factories.job(status=JobStatus.PENDING, run_at=later)
    before = Job.objects.values("status", "run_at", "priority").get(pk=job.pk)

    def refuse(**fields):
        raise RuntimeError("the audit table is full")

    monkeypatch.setattr(AuditEntry.objects, "create", refuse)
    with pytest.raises(RuntimeError):
        operation(job)
    assert Job.objects.values("status", "run_at", "priority").get(pk=job.pk) == before


def test_a_requeue_whose_audit_row_cannot_be_written_leaves_the_dead_letter_open(monkeypatch):
    job, dead = factories.dead_job()
    monkeypatch.setattr(
        AuditEntry.objects, "create", lambda **fields: (_ for _ in ()).throw(RuntimeError("full"))
    )
    with pytest.raises(RuntimeError):
        staff.requeue("cli", [dead.pk])
    dead.refresh_from_db()
    assert dead.is_open and Job.objects.count() == 1


def test_paused_type_is_not_claimed_until_resumed_and_other_types_run():
    held = factories.job(type="test.record", status=JobStatus.PENDING)
    other = factories.job(type="test.noop", status=JobStatus.PENDING)
    assert staff.pause_type("cli", "test.record") is True
    assert staff.pause_type("cli", "test.record") is False  # already paused: audited as no change
    assert run_jobs() == 1
    assert Job.objects.get(pk=other.pk).status == JobStatus.SUCCEEDED
    assert Job.objects.get(pk=held.pk).status == JobStatus.PENDING
    assert staff.resume_type(factories.operator("alice"), "test.record") is True
    assert run_jobs() == 1
    assert Job.objects.get(pk=held.pk).status == JobStatus.SUCCEEDED
    entries = AuditEntry.objects.order_by("at", "id")
    assert list(entries.values_list("actor", "action", "target_kind", "target", "details")) == [
        ("cli", "pause", "type", "test.record", ""),
        ("cli", "pause", "type", "test.record", "no change"),
        ("alice", "resume", "type", "test.record", ""),
    ]
    state = JobTypeState.objects.get(name="test.record")
    assert not state.paused and state.changed_by == "alice"


def test_pausing_an_unknown_type_changes_nothing():
    with pytest.raises(UnknownJobType):
        staff.pause_type("cli", "no.such.type")
    assert not JobTypeState.objects.filter(name="no.such.type").exists()
    assert not AuditEntry.objects.exists()


def test_a_type_pause_whose_audit_row_cannot_be_written_changes_nothing(monkeypatch):
    monkeypatch.setattr(
        AuditEntry.objects, "create", lambda **fields: (_ for _ in ()).throw(RuntimeError("full"))
    )
    with pytest.raises(RuntimeError):
        staff.pause_type("cli", "test.record")
    assert not JobTypeState.objects.filter(name="test.record", paused=True).exists()
