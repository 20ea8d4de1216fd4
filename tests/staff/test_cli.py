"""`manage.py jobs ...`: output, audit and exit codes (0 done, 1 error, 2 some items left alone)."""

import json
import subprocess
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import AuditEntry, DeadLetter, Job, JobStatus, JobTypeState, QueueState
from tests.staff import factories
from tests.utils import manage_py, subprocess_env

pytestmark = pytest.mark.django_db


def jobs_cli(*args) -> str:
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_stats_json_reports_queues_and_dead_letters():
    factories.job(status=JobStatus.PENDING, queue="mail")
    factories.dead_job()
    data = json.loads(jobs_cli("stats", "--json"))
    assert next(q for q in data["queues"] if q["name"] == "mail")["pending"] == 1
    assert data["dead_letters"]["open"] == 1


def test_stats_text_names_queues_and_paused_ones():
    factories.job(status=JobStatus.PENDING, queue="mail")
    jobs_cli("pause", "mail")
    out = jobs_cli("stats")
    assert "mail" in out and "paused" in out and "dead letters open: 0" in out


def test_list_filters_by_status_and_type():
    a = factories.job(type="test.record", status=JobStatus.PENDING)
    factories.job(type="test.noop", status=JobStatus.PENDING)
    factories.job(type="test.record", status=JobStatus.SUCCEEDED)
    out = jobs_cli("list", "--status", "pending", "--type", "test.record")
    rows = out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[0] == str(a.pk)


def test_show_prints_payload_errors_and_traceback():
    dead = factories.stale_dead_letter(payload={"key": "order-9"})
    out = jobs_cli("show", str(dead.job_id))
    assert (
        '"key": "order-9"' in out
        and "ConnectionRefusedError" in out
        and f"dead letter {dead.pk} (open)" in out
    )


def test_show_unknown_id_is_an_error():
    with pytest.raises(CommandError, match="no job with id 999999") as exc:
        jobs_cli("show", "999999")
    assert exc.value.returncode == 1


def test_retry_ids_and_audit_as_cli():
    waiting = factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=1))
    out = jobs_cli("retry", str(waiting.pk))
    assert f"Retried job {waiting.pk}" in out
    assert AuditEntry.objects.get(job=waiting).actor.startswith("cli")


def test_retry_with_an_unknown_id_changes_nothing():
    waiting = factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=1))
    with pytest.raises(CommandError, match="no job with id 424242"):
        jobs_cli("retry", str(waiting.pk), "424242")
    assert Job.objects.get(pk=waiting.pk).run_at > timezone.now()


def test_retry_of_a_finished_job_exits_2():
    done = factories.job(status=JobStatus.SUCCEEDED)
    with pytest.raises(CommandError) as exc:
        jobs_cli("retry", str(done.pk))
    assert exc.value.returncode == 2


def test_retry_dead_by_type_requeues_only_that_type_once():
    _, permanent = factories.dead_job()
    stale = factories.stale_dead_letter()
    out = jobs_cli("retry", "--dead", "--type", "test.permanent")
    assert f"Requeued dead letter {permanent.pk}" in out
    assert DeadLetter.objects.get(pk=stale.pk).is_open
    assert "no open dead letters" in jobs_cli("retry", "--dead", "--type", "test.permanent")
    assert Job.objects.filter(requeued_from=permanent).count() == 1


def test_cancel_cancels_and_reports():
    job = factories.job(status=JobStatus.PENDING)
    jobs_cli("cancel", str(job.pk), "--reason", "customer called")
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.status_reason == "customer called"


def test_enqueue_validates_type_json_and_payload():
    with pytest.raises(CommandError, match="unknown job type 'nope'"):
        jobs_cli("enqueue", "nope")
    with pytest.raises(CommandError, match="not valid JSON"):
        jobs_cli("enqueue", "test.sleep", "--payload", "{seconds: 1")
    with pytest.raises(CommandError, match="seconds"):
        jobs_cli("enqueue", "test.sleep", "--payload", '{"seconds": "soon"}')
    with pytest.raises(CommandError, match="invalid age"):
        jobs_cli("enqueue", "test.sleep", "--payload", '{"seconds": 1}', "--delay", "soon")
    assert not Job.objects.exists()


def test_enqueue_with_delay_and_priority():
    out = jobs_cli(
        "enqueue", "test.sleep", "--payload", '{"seconds": 1}', "--delay", "10m", "--priority", "20"
    )
    job = Job.objects.get()
    assert f"enqueued job {job.pk}" in out and job.priority == 20
    assert timezone.now() + timedelta(minutes=9) < job.run_at <= timezone.now() + timedelta(minutes=10)


def test_pause_and_resume_a_queue():
    jobs_cli("pause", "mail")
    assert QueueState.objects.get(name="mail").paused
    jobs_cli("resume", "mail")
    assert not QueueState.objects.get(name="mail").paused
    assert list(AuditEntry.objects.order_by("at").values_list("action", flat=True)) == ["pause", "resume"]


def test_pause_type_and_resume_type_audit_and_show_in_stats():
    assert jobs_cli("pause-type", "test.record") == "type test.record paused\n"
    assert "type test.record paused since" in jobs_cli("stats")
    data = json.loads(jobs_cli("stats", "--json"))
    assert [t["name"] for t in data["paused_types"]] == ["test.record"]
    assert data["paused_types"][0]["by"].startswith("cli")
    assert jobs_cli("resume-type", "test.record") == "type test.record resumed\n"
    assert "type test.record paused" not in jobs_cli("stats")
    entries = AuditEntry.objects.order_by("at", "id").values_list("action", "target_kind", "target")
    assert list(entries) == [("pause", "type", "test.record"), ("resume", "type", "test.record")]


@pytest.mark.parametrize("verb", ["pause-type", "resume-type"])
def test_pause_type_of_an_unknown_type_is_an_error(verb):
    with pytest.raises(CommandError, match="unknown job type 'no.such.type'.*known types: .*test.record"):
        jobs_cli(verb, "no.such.type")
    assert not JobTypeState.objects.filter(name="no.such.type").exists()
    assert not AuditEntry.objects.exists()


def test_why_prints_the_reasons_a_job_waits_in_order():
    held = factories.job(type="test.record", status=JobStatus.PENDING, queue="mail")
    jobs_cli("pause-type", "test.record")
    lines = jobs_cli("why", str(held.pk)).splitlines()
    assert [line.split(":")[0] for line in lines] == ["type_paused", "no_worker"]
    assert "test.record is paused" in lines[0] and "queue mail" in lines[1]


def test_why_of_a_finished_job_says_it_is_not_waiting():
    done = factories.job(status=JobStatus.SUCCEEDED)
    assert jobs_cli("why", str(done.pk)).startswith("finished: Not waiting")


def test_why_unknown_id_is_an_error():
    with pytest.raises(CommandError, match="no job with id 999999"):
        jobs_cli("why", "999999")


def test_real_process_exit_codes():
    ok = subprocess.run([*manage_py(), "jobs", "list"], env=subprocess_env(), capture_output=True, text=True)
    missing = subprocess.run(
        [*manage_py(), "jobs", "show", "987654"], env=subprocess_env(), capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert missing.returncode == 1 and "no job with id 987654" in missing.stderr
