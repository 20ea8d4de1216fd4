"""The admin for jobs, dead letters, schedules, queues and workers, through Django's test client."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.utils import timezone

from jobs import scheduler
from jobs.models import AuditEntry, CronSchedule, DeadLetter, Job, JobStatus, JobTypeState, QueueState
from tests.staff import factories

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator_client():
    return client_for(factories.operator())


@pytest.fixture
def support_client():
    return client_for(factories.support_user())


def action(client, model: str, name: str, ids, **extra):
    data = {"action": name, ACTION_CHECKBOX_NAME: [str(i) for i in ids], "index": 0, **extra}
    return client.post(f"/admin/jobs/{model}/", data, follow=True)


# -- jobs ----------------------------------------------------------------------------------------


def test_job_list_shows_status_type_queue_priority_attempts(support_client):
    factories.job(type="test.record", status=JobStatus.PENDING, priority=10, attempts=2, max_attempts=5)
    page = support_client.get("/admin/jobs/job/").content.decode()
    assert "test.record" in page and "2/5" in page and "Pending" in page


def test_job_list_filters_by_status_queue_and_type(support_client):
    a = factories.job(type="test.record", status=JobStatus.PENDING)
    b = factories.job(type="test.noop", status=JobStatus.SUCCEEDED, queue="mail")
    assert list(support_client.get("/admin/jobs/job/?status=pending").context["cl"].result_list) == [a]
    assert list(support_client.get("/admin/jobs/job/?queue=mail").context["cl"].result_list) == [b]
    assert list(support_client.get("/admin/jobs/job/?type=test.record").context["cl"].result_list) == [a]


def test_job_search_finds_by_id_type_and_unique_key(support_client):
    a = factories.job(type="test.record", unique_key="order:42:confirm")
    factories.job(type="test.noop")
    for term in (str(a.pk), "test.record", "order:42:confirm"):
        result = support_client.get("/admin/jobs/job/", {"q": term}).context["cl"].result_list
        assert list(result) == [a], term


def test_job_detail_shows_payload_errors_with_traceback_and_dependency_links(support_client):
    parent = factories.job(status=JobStatus.SUCCEEDED)
    job, dead = factories.dead_job(payload={"key": "order-17"})
    child = factories.job(status=JobStatus.CANCELLED)
    job.child_links.create(child=child)
    job.parent_links.create(parent=parent)
    page = support_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "&quot;key&quot;: &quot;order-17&quot;" in page
    assert "PermanentError" in page and "Traceback (most recent call last)" in page
    assert f"/admin/jobs/job/{parent.pk}/change/" in page and f"/admin/jobs/job/{child.pk}/change/" in page
    assert f"/admin/jobs/deadletter/{dead.pk}/change/" in page


def test_job_fields_are_read_only_even_for_superusers(admin_client):
    job = factories.job(status=JobStatus.RUNNING, locked_by="w1", lock_token="t")
    response = admin_client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert response.context["adminform"].form.fields == {}
    admin_client.post(f"/admin/jobs/job/{job.pk}/change/", {"status": "succeeded", "priority": 5})
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.priority == 0
    assert admin_client.get("/admin/jobs/job/add/").status_code == 403


def test_retry_action_makes_pending_job_due_and_requeues_dead_one(operator_client):
    waiting = factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=2))
    dead_job, dead = factories.dead_job()
    response = action(operator_client, "job", "retry_jobs", [waiting.pk, dead_job.pk])
    assert "Retried 2" in response.content.decode()
    waiting.refresh_from_db()
    dead.refresh_from_db()
    assert waiting.run_at <= timezone.now() and dead.requeued_job.status == JobStatus.PENDING
    assert AuditEntry.objects.filter(action="retry", actor="operator").count() == 2


def test_support_role_sees_no_actions_and_cannot_post_them(support_client):
    waiting = factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=2))
    response = support_client.get("/admin/jobs/job/")
    assert "retry_jobs" not in response.content.decode()
    action(support_client, "job", "retry_jobs", [waiting.pk])
    assert support_client.post(f"/admin/jobs/job/{waiting.pk}/do/retry_jobs/").status_code == 403
    waiting.refresh_from_db()
    assert waiting.run_at > timezone.now() and not AuditEntry.objects.exists()


def test_non_staff_cannot_open_the_job_admin():
    customer = factories.user("customer", staff=False, perms=factories.VIEW_PERMISSIONS)
    response = client_for(customer).get("/admin/jobs/job/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_cancel_needs_the_cancel_permission():
    job = factories.job(status=JobStatus.PENDING)
    retrier = client_for(factories.user("retrier", perms=[*factories.VIEW_PERMISSIONS, "retry_job"]))
    action(retrier, "job", "cancel_jobs", [job.pk])
    assert Job.objects.get(pk=job.pk).status == JobStatus.PENDING
    canceller = client_for(factories.user("canceller", perms=[*factories.VIEW_PERMISSIONS, "cancel_job"]))
    action(canceller, "job", "cancel_jobs", [job.pk])
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_change_priority_action_takes_the_number_from_the_action_form(operator_client):
    job = factories.job(status=JobStatus.PENDING, priority=0)
    action(operator_client, "job", "change_priority", [job.pk], priority="20")
    assert Job.objects.get(pk=job.pk).priority == 20
    response = action(operator_client, "job", "change_priority", [job.pk], priority="high")
    assert "whole number" in response.content.decode() and Job.objects.get(pk=job.pk).priority == 20


def test_detail_page_buttons_act_on_that_job_and_return_to_it(operator_client):
    job = factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=1))
    page = operator_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert f"/admin/jobs/job/{job.pk}/do/run_jobs_now/" in page
    response = operator_client.post(f"/admin/jobs/job/{job.pk}/do/run_jobs_now/")
    assert response.status_code == 302 and response["Location"] == f"/admin/jobs/job/{job.pk}/change/"
    assert Job.objects.get(pk=job.pk).run_at <= timezone.now()
    page = operator_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "run_now" in page and "operator" in page  # the audit trail on the job


def test_running_job_offers_no_priority_or_retry_button(operator_client):
    job = factories.job(status=JobStatus.RUNNING, locked_by="w1", lock_token="t")
    page = operator_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "/do/change_priority/" not in page and "/do/retry_jobs/" not in page
    assert f"/admin/jobs/job/{job.pk}/do/cancel_jobs/" in page


# -- dead letters --------------------------------------------------------------------------------


def test_dead_letter_detail_shows_the_full_error_history(support_client):
    dead = factories.stale_dead_letter()
    page = support_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").content.decode()
    assert "ConnectionRefusedError" in page and "orders/jobs.py" in page and "host-1-abc" in page


def test_dead_letters_filter_by_type_error_class_and_state(support_client):
    dead_job, permanent = factories.dead_job()
    stale = factories.stale_dead_letter()
    url = "/admin/jobs/deadletter/"
    assert list(support_client.get(url, {"type": "test.sleep"}).context["cl"].result_list) == [stale]
    by_class = support_client.get(url, {"error_class": "jobs.exceptions.PermanentError"})
    assert list(by_class.context["cl"].result_list) == [permanent]
    assert len(support_client.get(url, {"state": "open"}).context["cl"].result_list) == 2


def test_requeue_action_links_the_new_job_and_does_not_enqueue_twice(operator_client):
    _, dead = factories.dead_job()
    action(operator_client, "deadletter", "requeue_selected", [dead.pk])
    response = action(operator_client, "deadletter", "requeue_selected", [dead.pk])
    assert "already requeued" in response.content.decode()
    dead.refresh_from_db()
    assert Job.objects.filter(requeued_from=dead).count() == 1
    page = operator_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").content.decode()
    assert f"/admin/jobs/job/{dead.requeued_job_id}/change/" in page


def test_requeue_all_of_type_requeues_open_letters_of_the_selected_types(operator_client):
    _, a = factories.dead_job(payload={"key": "a"})
    _, b = factories.dead_job(payload={"key": "b"})
    other = factories.stale_dead_letter()
    action(operator_client, "deadletter", "requeue_all_of_type", [a.pk])
    assert DeadLetter.objects.filter(pk__in=[a.pk, b.pk], requeued_at__isnull=False).count() == 2
    assert DeadLetter.objects.get(pk=other.pk).is_open


def test_requeue_needs_its_permission(support_client):
    _, dead = factories.dead_job()
    action(support_client, "deadletter", "requeue_selected", [dead.pk])
    assert support_client.post(f"/admin/jobs/deadletter/{dead.pk}/do/requeue_selected/").status_code == 403
    assert support_client.get(f"/admin/jobs/deadletter/{dead.pk}/edit-requeue/").status_code == 403
    assert DeadLetter.objects.get(pk=dead.pk).is_open


def test_discard_action_asks_for_a_reason_first(operator_client):
    _, dead = factories.dead_job()
    page = action(operator_client, "deadletter", "discard_selected", [dead.pk])
    assert "Reason" in page.content.decode() and DeadLetter.objects.get(pk=dead.pk).is_open
    data = {"action": "discard_selected", ACTION_CHECKBOX_NAME: [dead.pk], "confirm": "yes", "reason": ""}
    operator_client.post("/admin/jobs/deadletter/", data)
    assert DeadLetter.objects.get(pk=dead.pk).is_open
    data["reason"] = "order was cancelled by phone"
    operator_client.post("/admin/jobs/deadletter/", data)
    dead.refresh_from_db()
    assert dead.discard_reason == "order was cancelled by phone" and dead.discarded_by.username == "operator"
    audit = AuditEntry.objects.get(action="discard")
    assert audit.dead_letter == dead and audit.job == dead.job


def test_discard_needs_its_permission():
    _, dead = factories.dead_job()
    requeuer = client_for(
        factories.user("requeuer", perms=[*factories.VIEW_PERMISSIONS, "requeue_deadletter"])
    )
    data = {"action": "discard_selected", ACTION_CHECKBOX_NAME: [dead.pk], "confirm": "yes", "reason": "x"}
    requeuer.post("/admin/jobs/deadletter/", data)
    assert requeuer.post(f"/admin/jobs/deadletter/{dead.pk}/discard/", {"reason": "x"}).status_code == 403
    assert DeadLetter.objects.get(pk=dead.pk).is_open


def test_edit_before_requeue_shows_validation_errors_then_requeues(operator_client):
    dead = factories.stale_dead_letter(payload={"key": "old"})
    url = f"/admin/jobs/deadletter/{dead.pk}/edit-requeue/"
    form = operator_client.get(url).content.decode()
    assert "&quot;key&quot;: &quot;old&quot;" in form and "seconds" in form  # the payload and its schema
    bad_json = operator_client.post(url, {"payload": "{key: old"}).content.decode()
    assert "Not valid JSON" in bad_json
    invalid = operator_client.post(
        url, {"payload": json.dumps({"key": "old", "seconds": "soon"})}
    ).content.decode()
    assert "invalid payload for job type &#x27;test.sleep&#x27;: seconds" in invalid
    assert DeadLetter.objects.get(pk=dead.pk).is_open
    response = operator_client.post(url, {"payload": json.dumps({"key": "fixed", "seconds": 1})})
    assert response.status_code == 302
    dead.refresh_from_db()
    assert dead.requeued_job.payload == {"key": "fixed", "seconds": 1.0}
    page = operator_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").content.decode()
    assert "edit" in page and "payload was" in page  # audit trail on the dead letter


def test_dead_letters_cannot_be_edited_or_deleted_directly(admin_client):
    _, dead = factories.dead_job()
    assert admin_client.get(f"/admin/jobs/deadletter/{dead.pk}/delete/").status_code == 403
    assert (
        admin_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").context["adminform"].form.fields == {}
    )


# -- schedules, queues, workers, audit -----------------------------------------------------------


def schedule_form(**overrides):
    data = {
        "name": "nightly",
        "expression": "0 3 * * *",
        "time_zone": "UTC",
        "job_type": "test.noop",
        "payload": "{}",
        "priority": "",
        "enabled": "on",
    }
    data.update(overrides)
    return data


def test_schedule_edit_validates_the_expression_and_shows_next_five_runs(admin_client):
    response = admin_client.post("/admin/jobs/cronschedule/add/", schedule_form(expression="every night"))
    assert "invalid cron expression" in response.content.decode()
    assert not CronSchedule.objects.filter(name="nightly").exists()
    response = admin_client.post("/admin/jobs/cronschedule/add/", schedule_form(payload='{"key": 5}'))
    assert "invalid payload" in response.content.decode()
    admin_client.post("/admin/jobs/cronschedule/add/", schedule_form())
    schedule = CronSchedule.objects.get(name="nightly")
    assert schedule.next_run_at is not None
    page = admin_client.get(f"/admin/jobs/cronschedule/{schedule.pk}/change/").content.decode()
    assert page.count(" 03:00 UTC</div>") == 5
    assert AuditEntry.objects.get(action="schedule").target == "nightly"
    assert "admin schedule created" in page


def test_a_schedule_declared_in_code_keeps_its_name(admin_client):
    scheduler.sync_declared()
    schedule = CronSchedule.objects.get(name="cleanup_completed_jobs")
    url = f"/admin/jobs/cronschedule/{schedule.pk}/change/"
    form = schedule_form(name="renamed", job_type="cleanup_completed_jobs", expression="15 4 * * *")
    admin_client.post(url, form)
    schedule.refresh_from_db()
    assert schedule.name == "cleanup_completed_jobs" and schedule.expression == "15 4 * * *"
    assert admin_client.get(f"/admin/jobs/cronschedule/{schedule.pk}/delete/").status_code == 403


def test_schedule_run_now_needs_its_permission_and_shows_the_outcome(operator_client):
    schedule = CronSchedule.objects.create(name="report", expression="0 0 * * *", job_type="test.noop")
    viewer = client_for(factories.support_user())
    action(viewer, "cronschedule", "run_schedules_now", [schedule.pk])
    assert not Job.objects.exists()
    action(operator_client, "cronschedule", "run_schedules_now", [schedule.pk])
    job = Job.objects.get()
    assert CronSchedule.objects.get(pk=schedule.pk).last_job == job
    page = operator_client.get("/admin/jobs/cronschedule/").content.decode()
    assert f"#{job.pk} pending" in page


def test_disable_action_stops_a_schedule(operator_client):
    schedule = CronSchedule.objects.create(name="report", expression="0 0 * * *", job_type="test.noop")
    action(operator_client, "cronschedule", "disable_schedules", [schedule.pk])
    assert not CronSchedule.objects.get(pk=schedule.pk).enabled


def test_queue_admin_lists_known_queues_and_pauses_them(operator_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs.registry import job_types

    # every queue a job type names has its row since migrate: the list only reads
    assert {jt.queue for jt in job_types().values()} <= set(QueueState.objects.values_list("name", flat=True))
    with CaptureQueriesContext(connection) as queries:
        page = operator_client.get("/admin/jobs/queuestate/")
    assert "default" in page.content.decode()
    assert not [q["sql"] for q in queries if "jobs_queuestate" in q["sql"] and "INSERT" in q["sql"]]
    action(operator_client, "queuestate", "pause_queues", ["default"])
    state = QueueState.objects.get(name="default")
    assert state.paused and state.changed_by == "operator"
    entry = AuditEntry.objects.get(action="pause")
    assert (entry.target_kind, entry.target) == (AuditEntry.TargetKind.QUEUE, "default")
    action(operator_client, "queuestate", "resume_queues", ["default"])
    assert not QueueState.objects.get(name="default").paused


def test_support_role_cannot_pause_a_queue(support_client):
    support_client.get("/admin/jobs/queuestate/")
    action(support_client, "queuestate", "pause_queues", ["default"])
    assert not QueueState.objects.filter(paused=True).exists()


def test_job_page_says_why_the_job_waits(support_client):
    held = factories.job(type="test.record", status=JobStatus.PENDING, queue="mail")
    QueueState.objects.update_or_create(name="mail", defaults={"paused": True})
    page = support_client.get(f"/admin/jobs/job/{held.pk}/change/").content.decode()
    why = re.search(r'<ul class="jobs-why">.*?</ul>', page, re.S).group(0)
    assert re.findall(r'data-code="(\w+)"', why) == ["queue_paused", "no_worker"]
    done = factories.job(status=JobStatus.SUCCEEDED)
    page = support_client.get(f"/admin/jobs/job/{done.pk}/change/").content.decode()
    assert 'data-code="finished"' in page


def test_job_type_admin_lists_every_type_with_its_state_and_pauses_them(operator_client):
    from jobs.registry import job_types

    assert set(job_types()) <= set(JobTypeState.objects.values_list("name", flat=True))
    page = operator_client.get("/admin/jobs/jobtypestate/").content.decode()
    assert "test.record" in page and "test.noop" in page
    action(operator_client, "jobtypestate", "pause_types", ["test.record"])
    state = JobTypeState.objects.get(name="test.record")
    assert state.paused and state.changed_by == "operator"
    assert not JobTypeState.objects.get(name="test.noop").paused
    entry = AuditEntry.objects.get(action="pause")
    assert (entry.target_kind, entry.target) == (AuditEntry.TargetKind.TYPE, "test.record")
    paused_only = operator_client.get("/admin/jobs/jobtypestate/?paused__exact=1").content.decode()
    assert "test.record" in paused_only and "test.noop" not in paused_only
    action(operator_client, "jobtypestate", "resume_types", ["test.record"])
    assert not JobTypeState.objects.get(name="test.record").paused


def test_support_role_cannot_pause_a_job_type(support_client):
    assert support_client.get("/admin/jobs/jobtypestate/").status_code == 200
    action(support_client, "jobtypestate", "pause_types", ["test.record"])
    assert not JobTypeState.objects.filter(paused=True).exists()


def test_worker_list_shows_heartbeat_age_and_current_jobs(support_client):
    job = factories.job(status=JobStatus.RUNNING, locked_by="w", lock_token="t")
    factories.worker(queues=["mail"], concurrency=4, current_jobs=[job.pk], heartbeat_seconds_ago=3)
    page = support_client.get("/admin/jobs/workerprocess/").content.decode()
    assert "host-1" in page and "mail" in page and f"/admin/jobs/job/{job.pk}/change/" in page
    assert "3s ago" in page or "4s ago" in page


def test_audit_trail_is_read_only(admin_client):
    factories.job(status=JobStatus.PENDING)
    entry = AuditEntry.objects.create(actor="cli", action="retry")
    assert admin_client.get(f"/admin/jobs/auditentry/{entry.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/jobs/auditentry/add/").status_code == 403


def test_admin_index_links_to_the_dashboard(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert 'href="/staff/jobs/"' in page
    assert "Worker processes" in page and "processs" not in page


def test_requeue_of_a_payload_that_no_longer_validates_says_to_edit_it(operator_client):
    dead = factories.stale_dead_letter(payload={"key": "old"})
    response = action(operator_client, "deadletter", "requeue_selected", [dead.pk])
    assert "correct the payload" in response.content.decode()
    assert DeadLetter.objects.get(pk=dead.pk).is_open and not Job.objects.filter(requeued_from=dead).exists()


def test_discard_one_from_its_page_with_a_reason(operator_client):
    _, dead = factories.dead_job()
    url = f"/admin/jobs/deadletter/{dead.pk}/discard/"
    assert url in operator_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").content.decode()
    assert "This field is required" in operator_client.post(url, {"reason": ""}).content.decode()
    response = operator_client.post(url, {"reason": "test order"})
    assert response.status_code == 302
    dead.refresh_from_db()
    assert dead.discarded_at and dead.discard_reason == "test order"
    page = operator_client.get(f"/admin/jobs/deadletter/{dead.pk}/change/").content.decode()
    assert "test order" in page and "/discard/" not in page


def test_unfiltered_job_list_on_postgresql_uses_the_row_estimate(admin_client, monkeypatch):
    from django.db import connection

    from jobs.admin import EstimatedCountPaginator

    if connection.vendor != "postgresql":
        pytest.skip("the estimate is PostgreSQL's")
    factories.finished(30, minutes_ago=5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 10)
    response = admin_client.get("/admin/jobs/job/")
    assert response.context["cl"].result_count == 30
    filtered = admin_client.get("/admin/jobs/job/?status=succeeded")
    assert filtered.context["cl"].result_count == 30


def test_a_dead_job_already_requeued_offers_no_retry_and_links_the_new_job(operator_client):
    job, dead = factories.dead_job()
    operator_client.post(f"/admin/jobs/job/{job.pk}/do/retry_jobs/")
    dead.refresh_from_db()
    page = operator_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "/do/retry_jobs/" not in page
    assert f'requeued as <a href="/admin/jobs/job/{dead.requeued_job_id}/change/">' in page
