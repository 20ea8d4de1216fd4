"""Stall and lag alerts (jobs.alerts), evaluated on rows: each incident is one Alert row and one email
when it opens, one when it closes, however often and by however many evaluators it is evaluated."""

import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from jobs import alerts, engine
from jobs.conf import parse_lag_slo
from jobs.models import Alert, DeadLetter, Job, JobStatus, QueueState
from tests.staff import factories

pytestmark = pytest.mark.django_db

OPS = ["ops@example.com", "oncall@example.com"]


@pytest.fixture(autouse=True)
def alert_settings(settings):
    """Only the condition a test sets up can fire: lag SLOs and bursts are off unless it sets them."""
    settings.JOBS_ALERT_EMAILS = ",".join(OPS)
    settings.JOBS_STALL_AFTER = 60.0
    settings.JOBS_LAG_SLO = ""
    settings.JOBS_DEAD_LETTER_BURST = 0
    settings.JOBS_STALE_AFTER = 30.0
    settings.JOBS_BASE_URL = "https://shop.example.com"
    return settings


def due(queue: str, seconds_ago: float, **fields):
    return factories.job(queue=queue, run_at=timezone.now() - timedelta(seconds=seconds_ago), **fields)


def kinds() -> set[tuple[str, str]]:
    return {c.key for c in alerts.conditions()}


def test_a_queue_due_without_a_completion_for_stall_after_alerts_once():
    due("mail", 120, payload={"email": "ada@example.com"})
    changes = alerts.evaluate()
    assert [(a.kind, a.subject) for a in changes.opened] == [("stalled", "mail")]
    (email,) = mail.outbox
    assert email.to == OPS and email.subject == "[jobs] Queue stalled mail"
    assert "Queue mail is stalled: 1 due job(s) and none finished for 60s." in email.body
    assert "Since " in email.body and "Dashboard: https://shop.example.com/staff/jobs/" in email.body
    assert "ada@example.com" not in email.body  # never a payload
    assert alerts.evaluate().opened == [] and len(mail.outbox) == 1
    assert Alert.objects.get().closed_at is None


def test_a_queue_that_finished_a_job_lately_or_is_due_only_briefly_is_not_stalled():
    due("busy", 120)
    factories.job(queue="busy", status=JobStatus.SUCCEEDED, finished_at=timezone.now() - timedelta(seconds=5))
    due("fresh", 10)
    factories.job(queue="later", run_at=timezone.now() + timedelta(hours=1))
    assert kinds() == set()


def test_a_stalled_queue_recovers_with_one_email_when_a_job_finishes():
    job = due("mail", 120)
    alerts.evaluate()
    job.status, job.finished_at = JobStatus.SUCCEEDED, timezone.now()
    job.save()
    changes = alerts.evaluate()
    assert [a.subject for a in changes.closed] == ["mail"]
    assert alerts.evaluate().closed == []
    assert [m.subject for m in mail.outbox] == [
        "[jobs] Queue stalled mail",
        "[jobs] Recovered: queue stalled mail",
    ]
    assert Alert.objects.get().closed_at is not None
    # Stalled again an hour later: a new incident, a new email.
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(hours=1))
    due("mail", 120)
    assert len(alerts.evaluate().opened) == 1 and Alert.objects.count() == 2 and len(mail.outbox) == 3


def test_lag_over_the_queue_slo_alerts_with_per_queue_overrides(alert_settings):
    alert_settings.JOBS_STALL_AFTER = 3600.0
    alert_settings.JOBS_LAG_SLO = "600,mail=60"
    due("mail", 120)
    due("default", 120)
    assert kinds() == {("lag", "mail")}
    alerts.evaluate()
    (email,) = mail.outbox
    assert email.subject == "[jobs] Lag over SLO mail" and "over its SLO of 60s" in email.body


def test_a_paused_queue_is_not_flagged(alert_settings):
    alert_settings.JOBS_LAG_SLO = "60"
    due("mail", 120)
    QueueState.objects.create(name="mail", paused=True)
    assert kinds() == set()


def test_a_dead_worker_holding_jobs_alerts_until_its_jobs_are_reaped():
    factories.worker("gone-1", heartbeat_seconds_ago=120)
    factories.worker("quiet-1", heartbeat_seconds_ago=120)  # silent but holds nothing: no alert
    factories.worker("alive-1", heartbeat_seconds_ago=1)
    stale = timezone.now() - timedelta(seconds=120)
    for locked_by in ("gone-1", "gone-1", "alive-1"):
        factories.job(status=JobStatus.RUNNING, locked_by=locked_by, lock_token="t", heartbeat_at=stale)
    changes = alerts.evaluate()
    assert [(a.kind, a.subject) for a in changes.opened] == [("dead_worker", "gone-1")]
    (email,) = mail.outbox
    assert (
        email.subject == "[jobs] Dead worker holding jobs gone-1" and "holds 2 running job(s)" in email.body
    )
    assert len(engine.reap_stale(30.0)) == 3
    assert [a.subject for a in alerts.evaluate().closed] == ["gone-1"] and len(mail.outbox) == 2


def test_a_burst_of_dead_letters_alerts_without_their_errors(alert_settings):
    alert_settings.JOBS_DEAD_LETTER_BURST = 3
    alert_settings.JOBS_DEAD_LETTER_WINDOW = 300.0

    def dead_letter():
        return DeadLetter.objects.create(
            type="test.permanent", queue="default", error_message="bounced: ada@example.com"
        )

    dead_letter(), dead_letter()
    assert alerts.evaluate().opened == []
    dead_letter()
    assert [(a.kind, a.subject) for a in alerts.evaluate().opened] == [("dead_letters", "")]
    (email,) = mail.outbox
    assert email.subject == "[jobs] Burst of dead letters"
    assert "3 dead letters in the last 300s" in email.body and "test.permanent (3)" in email.body
    assert "ada@example.com" not in email.body
    DeadLetter.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    assert len(alerts.evaluate().closed) == 1 and len(mail.outbox) == 2


def test_no_recipients_still_records_the_incident(alert_settings):
    alert_settings.JOBS_ALERT_EMAILS = ""
    due("mail", 120)
    assert len(alerts.evaluate().opened) == 1 and mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_evaluators_open_one_incident_and_send_one_email():
    due("mail", 120)
    opened, barrier = [], threading.Barrier(4)

    def evaluate():
        try:
            barrier.wait()
            opened.extend(alerts.evaluate().opened)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(opened) == 1 and Alert.objects.count() == 1 and len(mail.outbox) == 1


def test_the_alerts_command_checks_and_lists_open_incidents(capsys):
    call_command("jobs", "alerts")
    assert capsys.readouterr().out.strip() == "no open alerts"
    due("mail", 120)
    call_command("jobs", "alerts", "--check")
    out = capsys.readouterr().out
    assert "opened: queue mail is stalled" in out and "stalled mail since " in out
    call_command("jobs", "alerts")
    assert "stalled mail since " in capsys.readouterr().out and len(mail.outbox) == 1


def test_metrics_and_dashboard_flag_a_stalled_queue_and_a_lag_over_slo(alert_settings, admin_client):
    alert_settings.JOBS_LAG_SLO = "mail=30"
    due("mail", 120)
    body = admin_client.get("/staff/jobs/metrics").content.decode()
    assert 'jobs_queue_stalled{queue="mail"} 1.0' in body
    assert 'jobs_queue_lag_over_slo{queue="mail"} 1.0' in body
    assert 'jobs_queue_lag_over_slo{queue="default"} 0.0' in body
    assert "jobs_dead_workers_holding_jobs 0.0" in body and "jobs_dead_letter_burst 0.0" in body
    page = admin_client.get("/staff/jobs/panels/").content.decode()
    assert 'id="alerts"' in page and 'data-kind="stalled" data-subject="mail"' in page
    assert "alert-stalled" in page and "alert-lag" in page


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("", (None, {})),
        ("300", (300.0, {})),
        ("300, mail=60,reports=3600", (300.0, {"mail": 60.0, "reports": 3600.0})),
        ("mail=60", (None, {"mail": 60.0})),
    ],
)
def test_lag_slo_format(text, parsed):
    assert parse_lag_slo(text) == parsed


@pytest.mark.parametrize("text", ["soon", "mail=", "=60", "mail=-1", "300,600"])
def test_a_bad_lag_slo_is_refused(text):
    with pytest.raises(ValueError, match="JOBS_LAG_SLO"):
        parse_lag_slo(text)


def test_staff_read_incidents_in_the_admin_and_cannot_edit_them(admin_client):
    due("mail", 120)
    alerts.evaluate()
    page = admin_client.get("/admin/jobs/alert/?closed_at__isempty=1").content.decode()
    assert "queue mail is stalled" in page
    alert = Alert.objects.get()
    assert admin_client.get(f"/admin/jobs/alert/{alert.pk}/change/").status_code == 200
    assert admin_client.get("/admin/jobs/alert/add/").status_code == 403
