"""A job left running with no live worker shows as stuck on the dashboard, in stats.json and in metrics."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from jobs.api import enqueue
from jobs.models import Job, JobStatus
from tests.staff import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(factories.support_user())
    return client


def left_running(heartbeat_seconds_ago: float | None, queue: str = "default") -> Job:
    """A job as a killed worker leaves it: running, its heartbeat growing old."""
    job = enqueue("test.noop", {"key": "orphan"}, queue=queue)
    heartbeat = (
        None if heartbeat_seconds_ago is None else timezone.now() - timedelta(seconds=heartbeat_seconds_ago)
    )
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        locked_by="gone-host-1234-abcdef",
        lock_token="t",
        started_at=timezone.now() - timedelta(minutes=10),
        heartbeat_at=heartbeat,
        attempts=1,
    )
    return job


def test_a_running_job_with_an_old_heartbeat_is_counted_stuck_in_stats(staff_client, settings):
    settings.JOBS_STALE_AFTER = 30
    left_running(heartbeat_seconds_ago=120, queue="mail")
    left_running(heartbeat_seconds_ago=None, queue="mail")
    left_running(heartbeat_seconds_ago=2, queue="mail")  # a live worker holds this one
    data = staff_client.get("/staff/jobs/stats.json").json()
    assert data["stuck"] == 2
    mail = next(q for q in data["queues"] if q["name"] == "mail")
    assert mail["running"] == 3 and mail["stuck"] == 2


def test_a_healthy_running_job_is_not_stuck(staff_client, settings):
    settings.JOBS_STALE_AFTER = 30
    left_running(heartbeat_seconds_ago=5)
    assert staff_client.get("/staff/jobs/stats.json").json()["stuck"] == 0
    assert b'id="stuck-jobs"' not in staff_client.get("/staff/jobs/").content


def test_the_dashboard_warns_about_stuck_jobs(staff_client, settings):
    settings.JOBS_STALE_AFTER = 30
    left_running(heartbeat_seconds_ago=90, queue="reports")
    for url in ("/staff/jobs/", "/staff/jobs/panels/"):
        body = staff_client.get(url).content.decode()
        assert 'id="stuck-jobs"' in body
        assert "1 running job without a heartbeat for over 30s" in body
        row = body.split('data-queue="reports"', 1)[1].split("</tr>", 1)[0]
        assert '<td class="num stuck"><span class="jobs-badge stale">1</span></td>' in row


def test_metrics_export_stuck_jobs_per_queue(staff_client, settings):
    settings.JOBS_STALE_AFTER = 30
    left_running(heartbeat_seconds_ago=600, queue="reports")
    left_running(heartbeat_seconds_ago=600, queue="reports")
    body = staff_client.get("/staff/jobs/metrics").content.decode()
    assert 'jobs_queue_stuck{queue="reports"} 2.0' in body
    assert 'jobs_queue_stuck{queue="default"} 0.0' in body


def test_the_stuck_figure_follows_jobs_stale_after(staff_client, settings):
    left_running(heartbeat_seconds_ago=60)
    settings.JOBS_STALE_AFTER = 120
    assert staff_client.get("/staff/jobs/stats.json").json()["stuck"] == 0
    settings.JOBS_STALE_AFTER = 30
    assert staff_client.get("/staff/jobs/stats.json").json()["stuck"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_worker_was_killed_shows_as_stuck_until_a_worker_reaps_it(workers, settings):
    from tests.testapp.models import Run
    from tests.utils import wait_for

    settings.JOBS_STALE_AFTER = 1
    client = Client()
    client.force_login(factories.support_user())
    job = enqueue("test.sleep", {"key": "killed", "seconds": 30})
    victim = workers.start("--stale-after", "1")
    wait_for(lambda: Run.objects.filter(job_id=job.id).exists(), message="the job started")
    assert client.get("/staff/jobs/stats.json").json()["stuck"] == 0
    victim.kill()
    victim.wait(10)
    wait_for(lambda: client.get("/staff/jobs/stats.json").json()["stuck"] == 1, timeout=10, message="stuck")
    assert 'jobs_queue_stuck{queue="default"} 1.0' in client.get("/staff/jobs/metrics").content.decode()
    Job.objects.filter(pk=job.pk).update(payload={"key": "killed", "seconds": 0})
    workers.start("--stale-after", "1")
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, message="reaped and rerun")
    assert client.get("/staff/jobs/stats.json").json()["stuck"] == 0
