"""Bulk actions by filter (jobs.staff.bulk): the filter takes exactly the right rows, each batch commits
with an audit row carrying the filter, and a million rows never make one transaction."""

import json
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs import staff
from jobs.models import AuditEntry, DeadLetter, Job, JobStatus
from jobs.staff import BulkFilter, by_filter
from tests.staff import factories

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


def dead_letters(count: int, *, job_type="test.noop", queue="default", error_class="app.Timeout", at=None):
    """``count`` open dead letters made in one statement (no job rows: the job was pruned)."""
    at = at or timezone.now()
    DeadLetter.objects.bulk_create(
        [
            DeadLetter(
                type=job_type,
                queue=queue,
                payload={"key": f"k{i}"},
                error_class=error_class,
                error_message="boom",
                created_at=at,
            )
            for i in range(count)
        ],
        batch_size=2000,
    )


def audit_details(action: str) -> list[dict]:
    return [
        json.loads(d)
        for d in AuditEntry.objects.filter(action=action).order_by("id").values_list("details", flat=True)
    ]


def bulk_cli(*args) -> str:
    out = StringIO()
    call_command("jobs", "bulk", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


# -- the filter ----------------------------------------------------------------------------------


def test_bulk_requeue_takes_only_open_dead_letters_matching_type_queue_error_class_and_window():
    now = timezone.now()
    dead_letters(2, job_type="test.noop", queue="mail", error_class="app.Timeout", at=now - HOUR)
    dead_letters(1, job_type="test.record", queue="mail", error_class="app.Timeout", at=now - HOUR)
    dead_letters(1, job_type="test.noop", queue="other", error_class="app.Timeout", at=now - HOUR)
    dead_letters(1, job_type="test.noop", queue="mail", error_class="app.Refused", at=now - HOUR)
    dead_letters(1, job_type="test.noop", queue="mail", error_class="app.Timeout", at=now - 5 * HOUR)
    dead_letters(1, job_type="test.noop", queue="mail", error_class="app.Timeout", at=now)
    closed = DeadLetter.objects.filter(type="test.noop", queue="mail", error_class="app.Timeout").first()
    staff.discard("cli", [closed.pk], "not wanted")
    flt = BulkFilter(
        type="test.noop", queue="mail", error_class="app.Timeout", since=now - 2 * HOUR, until=now - HOUR / 2
    )
    expected = set(
        DeadLetter.objects.open()
        .filter(type="test.noop", queue="mail", error_class="app.Timeout", created_at=now - HOUR)
        .values_list("id", flat=True)
    )
    assert len(expected) == 1 and staff.bulk_count("requeue", flt) == 1

    counts = staff.bulk("cli", "requeue", flt)

    assert (counts.done, counts.skipped) == (1, 0)
    assert set(DeadLetter.objects.filter(requeued_at__isnull=False).values_list("id", flat=True)) == expected
    assert Job.objects.filter(requeued_from__in=expected, status=JobStatus.PENDING).count() == 1


def test_bulk_cancel_takes_waiting_jobs_of_the_type_and_queue_and_leaves_finished_ones():
    hit = [
        factories.job(type="test.noop", queue="mail", status=JobStatus.PENDING),
        factories.job(type="test.noop", queue="mail", status=JobStatus.BLOCKED),
    ]
    running = factories.job(
        type="test.noop", queue="mail", status=JobStatus.RUNNING, locked_by="w", lock_token="t"
    )
    done = factories.job(type="test.noop", queue="mail", status=JobStatus.SUCCEEDED)
    other_type = factories.job(type="test.record", queue="mail", status=JobStatus.PENDING)
    other_queue = factories.job(type="test.noop", queue="default", status=JobStatus.PENDING)

    counts = staff.bulk("cli", "cancel", BulkFilter(type="test.noop", queue="mail"), reason="endpoint gone")

    assert (counts.done, counts.skipped) == (3, 0)
    assert {j.status for j in Job.objects.filter(pk__in=[j.pk for j in hit])} == {JobStatus.CANCELLED}
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING and running.cancel_requested
    for untouched, status in ((done, "succeeded"), (other_type, "pending"), (other_queue, "pending")):
        untouched.refresh_from_db()
        assert untouched.status == status
    assert Job.objects.get(pk=hit[0].pk).status_reason == "endpoint gone"


def test_bulk_by_tag_takes_the_jobs_of_one_order_and_requeues_its_dead_letters_with_their_tags():
    mine = factories.job(type="test.noop", status=JobStatus.PENDING, tags=["order:42", "merchant:7"])
    other = factories.job(type="test.noop", status=JobStatus.PENDING, tags=["order:420"])
    dead_job, dead = factories.dead_job(job_type="test.permanent")
    Job.objects.filter(pk=dead_job.pk).update(tags=["order:42"])
    _, other_dead = factories.dead_job(job_type="test.permanent")

    counts = staff.bulk("cli", "cancel", BulkFilter(tag="order:42"), reason="order withdrawn")
    assert (counts.done, counts.skipped) == (1, 0)  # the dead job is not waiting: only "mine"
    mine.refresh_from_db()
    other.refresh_from_db()
    assert (mine.status, other.status) == (JobStatus.CANCELLED, JobStatus.PENDING)

    assert staff.bulk_count("requeue", BulkFilter(tag="order:42")) == 1
    counts = staff.bulk("cli", "requeue", BulkFilter(tag="order:42"))
    assert counts.done == 1
    dead.refresh_from_db()
    other_dead.refresh_from_db()
    assert dead.requeued_job.tags == ["order:42"] and other_dead.is_open
    assert [d["filter"] for d in audit_details("bulk_requeue")] == [{"tag": "order:42"}]
    assert "1" in bulk_cli("cancel", "--tag", "order:420", "--dry-run")


def test_bulk_retry_makes_waiting_jobs_due_and_requeues_dead_ones_by_status_and_finish_time():
    now = timezone.now()
    waiting = factories.job(type="test.noop", status=JobStatus.PENDING, run_at=now + HOUR)
    dead_job, dead = factories.dead_job(job_type="test.permanent")
    old_dead = factories.stale_dead_letter(job_type="test.permanent")
    Job.objects.filter(pk=old_dead.job_id).update(finished_at=now - 3 * HOUR)

    only_dead = BulkFilter(status="dead", since=now - HOUR, time_field="finished")
    assert staff.bulk_count("retry", only_dead) == 1
    counts = staff.bulk("cli", "retry", only_dead)

    assert counts.done == 1
    dead.refresh_from_db()
    old_dead.refresh_from_db()
    assert dead.requeued_at is not None and old_dead.is_open
    waiting.refresh_from_db()
    assert waiting.run_at > now  # not dead: not in the filter
    assert staff.bulk("cli", "retry", BulkFilter(type="test.noop")).done == 1
    waiting.refresh_from_db()
    assert waiting.run_at <= timezone.now()
    assert dead_job.pk  # the dead job itself stays dead; its dead letter made a fresh job


def test_a_filter_field_the_rows_do_not_have_and_an_empty_filter_are_refused():
    with pytest.raises(ValueError, match="dead letters only"):
        staff.bulk_count("retry", BulkFilter(error_class="app.Timeout"))
    with pytest.raises(ValueError, match="jobs only"):
        staff.bulk_count("requeue", BulkFilter(status="dead"))
    with pytest.raises(ValueError, match="empty filter"):
        staff.bulk("cli", "requeue", BulkFilter())
    with pytest.raises(ValueError, match="unknown bulk action"):
        staff.bulk("cli", "explode", BulkFilter(type="x"))
    with pytest.raises(ValueError, match="reason"):
        staff.bulk("cli", "discard", BulkFilter(type="x"))
    assert not AuditEntry.objects.exists()


# -- batches and the audit trail -----------------------------------------------------------------


def test_each_batch_commits_with_an_audit_row_carrying_the_filter_and_counts():
    dead_letters(25, error_class="app.Timeout")
    dead_letters(3, error_class="app.Refused")
    flt = BulkFilter(error_class="app.Timeout")

    with CaptureQueriesContext(connection) as queries:
        counts = staff.bulk(
            factories.operator("alice"), "discard", flt, reason="vendor outage", batch_size=10
        )

    assert (counts.done, counts.skipped, counts.batches) == (25, 0, 3)
    details = audit_details("bulk_discard")
    assert [d["done"] for d in details] == [10, 10, 5]
    assert all(
        d["filter"] == {"error_class": "app.Timeout"} and d["reason"] == "vendor outage" for d in details
    )
    assert set(AuditEntry.objects.filter(action="bulk_discard").values_list("actor", flat=True)) == {"alice"}
    # Three transactions (SAVEPOINT/BEGIN markers aside, one UPDATE of at most 10 rows each).
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "jobs_deadletter"')]
    assert len(updates) == 3
    assert DeadLetter.objects.open().filter(error_class="app.Refused").count() == 3


@pytest.mark.django_db(transaction=True)  # real commits: the first batch stays when the second fails
def test_a_bulk_action_run_again_after_a_crash_finishes_only_the_rest(monkeypatch):
    dead_letters(30)
    flt = BulkFilter(type="test.noop")
    real = by_filter._requeue_batch
    calls = []

    def crash_on_second_batch(actor, ids, reason):
        calls.append(ids)
        done = real(actor, ids, reason)
        if len(calls) == 2:
            raise RuntimeError("worker host lost")
        return done

    monkeypatch.setattr(by_filter, "_requeue_batch", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        staff.bulk("cli", "requeue", flt, batch_size=10)
    monkeypatch.setattr(by_filter, "_requeue_batch", real)
    # The first batch committed with its audit row; the second rolled back with its own.
    assert DeadLetter.objects.filter(requeued_at__isnull=False).count() == 10
    assert len(audit_details("bulk_requeue")) == 1

    counts = staff.bulk("cli", "requeue", flt, batch_size=10)

    assert (counts.done, counts.skipped) == (20, 0)
    assert Job.objects.filter(requeued_from__isnull=False).count() == 30
    assert sum(d["done"] for d in audit_details("bulk_requeue")) == 30


def test_a_dead_letter_whose_payload_no_longer_validates_is_skipped_and_counted():
    factories.stale_dead_letter(job_type="test.sleep")
    dead_letters(2, job_type="test.sleep", error_class="jobs.exceptions.InvalidPayload")
    counts = staff.bulk("cli", "requeue", BulkFilter(type="test.sleep"))
    assert (counts.done, counts.skipped) == (0, 3)
    assert DeadLetter.objects.open().count() == 3 and audit_details("bulk_requeue")[0]["skipped"] == 3


def test_bulk_requeue_of_100000_dead_letters_completes_in_bounded_transactions():
    """The issue's proof: 100,000 dead letters requeued in batches of 1,000, each with its audit row."""
    dead_letters(100_000)
    started = time.monotonic()
    counts = staff.bulk("cli", "requeue", BulkFilter(type="test.noop"))
    elapsed = time.monotonic() - started
    assert (counts.done, counts.skipped, counts.batches) == (100_000, 0, 100)
    assert DeadLetter.objects.open().count() == 0
    assert Job.objects.filter(status=JobStatus.PENDING).count() == 100_000
    assert max(d["done"] for d in audit_details("bulk_requeue")) == 1000
    print(f"requeued 100,000 dead letters in {elapsed:.1f} s")


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_dry_run_prints_the_count_and_changes_nothing():
    dead_letters(4, error_class="app.Timeout")
    out = bulk_cli("requeue", "--error-class", "app.Timeout", "--dry-run")
    assert "would requeue 4" in out
    assert DeadLetter.objects.open().count() == 4 and not AuditEntry.objects.exists()


def test_cli_runs_and_prints_done_and_skipped():
    dead_letters(4, queue="mail")
    since = (timezone.now() - HOUR).isoformat()
    out = bulk_cli("discard", "--queue", "mail", "--since", since, "--reason", "spam", "--batch-size", "3")
    assert "discard: done 4, skipped 0 in 2 batch(es)" in out
    entry = AuditEntry.objects.filter(action="bulk_discard").first()
    assert entry.actor.startswith("cli") and json.loads(entry.details)["filter"]["queue"] == "mail"


@pytest.mark.parametrize(
    "args, message",
    [
        (["explode", "--type", "test.noop"], "unknown bulk action"),
        (["requeue", "--since", "yesterday"], "not an ISO date"),
        (["requeue", "--until", "2026-13-40"], "not an ISO date"),
        (["requeue"], "empty filter"),
        (["retry", "--error-class", "app.Timeout"], "dead letters only"),
        (["discard", "--type", "test.noop"], "reason"),
    ],
)
def test_cli_bad_input_is_an_error_and_changes_nothing(args, message):
    dead_letters(2)
    with pytest.raises(CommandError, match=message):
        bulk_cli(*args)
    assert DeadLetter.objects.open().count() == 2 and not AuditEntry.objects.exists()


def test_cli_all_takes_an_empty_filter():
    dead_letters(2)
    assert "done 2" in bulk_cli("requeue", "--all")
    assert audit_details("bulk_requeue")[0]["filter"] == {"all": True}


# -- admin ---------------------------------------------------------------------------------------


def test_admin_confirmation_page_shows_the_count_of_the_current_filter_and_runs_it(client):
    dead_letters(3, error_class="app.Timeout")
    dead_letters(2, error_class="app.Refused")
    client.force_login(factories.operator())
    url = reverse("admin:jobs_deadletter_bulk", args=["requeue"]) + "?error_class=app.Timeout&state=open"

    page = client.get(url)

    assert page.status_code == 200
    assert b"3 dead letter(s)" in page.content and b"app.Timeout" in page.content
    assert DeadLetter.objects.open().count() == 5
    done = client.post(url, {"confirm": "yes"}, follow=True)
    assert done.redirect_chain[-1][0].startswith(reverse("admin:jobs_deadletter_changelist"))
    assert b"done 3" in done.content
    assert DeadLetter.objects.open().filter(error_class="app.Timeout").count() == 0
    assert DeadLetter.objects.open().count() == 2
    assert audit_details("bulk_requeue")[0]["filter"] == {"error_class": "app.Timeout"}


def test_admin_bulk_cancel_of_jobs_by_the_changelist_filters(client):
    hit = factories.job(type="test.noop", queue="mail", status=JobStatus.PENDING)
    miss = factories.job(type="test.record", queue="mail", status=JobStatus.PENDING)
    client.force_login(factories.operator())
    url = reverse("admin:jobs_job_bulk", args=["cancel"]) + "?type=test.noop&queue=mail"
    assert b"1 job(s)" in client.get(url).content
    client.post(url, {"confirm": "yes"})
    hit.refresh_from_db()
    miss.refresh_from_db()
    assert (hit.status, miss.status) == (JobStatus.CANCELLED, JobStatus.PENDING)


def test_admin_discard_all_asks_for_a_reason(client):
    dead_letters(2)
    client.force_login(factories.operator())
    url = reverse("admin:jobs_deadletter_bulk", args=["discard"]) + "?type=test.noop"
    page = client.post(url, {"confirm": "yes", "reason": ""})
    assert page.status_code == 200 and DeadLetter.objects.open().count() == 2
    client.post(url, {"confirm": "yes", "reason": "duplicates"})
    assert DeadLetter.objects.open().count() == 0


def test_admin_bulk_needs_the_single_row_permission(client):
    dead_letters(2)
    client.force_login(factories.support_user())
    url = reverse("admin:jobs_deadletter_bulk", args=["requeue"]) + "?type=test.noop"
    assert client.get(url).status_code == 403
    assert client.post(url, {"confirm": "yes"}).status_code == 403
    assert DeadLetter.objects.open().count() == 2


def test_admin_refuses_a_filter_it_cannot_carry_over(client):
    dead_letters(2)
    client.force_login(factories.operator())
    url = reverse("admin:jobs_deadletter_bulk", args=["requeue"]) + "?q=boom"
    page = client.post(url, {"confirm": "yes"}, follow=True)
    assert b"search" in page.content and DeadLetter.objects.open().count() == 2


def test_changelist_links_to_the_bulk_pages_with_its_filter(client):
    client.force_login(factories.operator())
    page = client.get(reverse("admin:jobs_deadletter_changelist") + "?error_class=app.Timeout")
    assert reverse("admin:jobs_deadletter_bulk", args=["requeue"]).encode() + b"?error_class=app.Timeout" in (
        page.content
    )
