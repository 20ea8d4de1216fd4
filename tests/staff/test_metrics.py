"""The Prometheus endpoint: bearer token or staff session; counters and histograms from JobStat."""

import pytest
from django.test import Client

from jobs.models import JobStat, JobStatus
from tests.staff import factories

pytestmark = pytest.mark.django_db

URL = "/staff/jobs/metrics"


@pytest.fixture
def token(settings):
    settings.JOBS_METRICS_TOKEN = "s3cret-token"
    return "s3cret-token"


def test_metrics_refuse_anonymous_and_wrong_tokens(client, token):
    assert client.get(URL).status_code == 401
    assert client.get(URL, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_metrics_without_a_configured_token_refuse_any_bearer(client, settings):
    settings.JOBS_METRICS_TOKEN = ""
    assert client.get(URL, headers={"Authorization": "Bearer "}).status_code == 401


def test_metrics_refuse_non_staff_users(client):
    client.force_login(factories.user("customer", staff=False))
    assert client.get(URL).status_code == 401


def test_metrics_accept_the_token_and_staff_sessions(client, token):
    response = client.get(URL, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    staff_client = Client()
    staff_client.force_login(factories.support_user())
    assert staff_client.get(URL).status_code == 200


def test_metrics_expose_depth_lag_counters_histogram_and_workers(client, token):
    factories.job(status=JobStatus.PENDING, queue="mail")
    factories.job(status=JobStatus.RUNNING, queue="mail")
    factories.worker()
    factories.worker("stale-worker", heartbeat_seconds_ago=3600)
    factories.dead_job()
    JobStat.objects.create(type="send_order_confirmation", outcome="started", count=3)
    JobStat.objects.create(
        type="send_order_confirmation", outcome="succeeded", bucket="0.05", count=2, seconds=0.06
    )
    JobStat.objects.create(type="send_order_confirmation", outcome="failed", bucket="1", count=1, seconds=0.7)
    body = client.get(URL, headers={"Authorization": f"Bearer {token}"}).content.decode()
    assert 'jobs_queue_depth{queue="mail",status="pending"} 1.0' in body
    assert 'jobs_queue_depth{queue="mail",status="running"} 1.0' in body
    assert 'jobs_queue_lag_seconds{queue="mail"}' in body
    assert 'jobs_started_total{type="send_order_confirmation"} 3.0' in body
    assert 'jobs_succeeded_total{type="send_order_confirmation"} 2.0' in body
    assert 'jobs_failed_total{type="send_order_confirmation"} 1.0' in body
    assert 'jobs_run_seconds_bucket{le="0.05",type="send_order_confirmation"} 2.0' in body
    assert 'jobs_run_seconds_bucket{le="+Inf",type="send_order_confirmation"} 3.0' in body
    assert 'jobs_run_seconds_count{type="send_order_confirmation"} 3.0' in body
    assert "jobs_workers_alive 1.0" in body
    assert "jobs_dead_letters_open 1.0" in body


def test_metrics_expose_paused_job_types(client, token):
    from jobs import staff

    staff.pause_type("cli", "test.record")
    body = client.get(URL, headers={"Authorization": f"Bearer {token}"}).content.decode()
    assert 'jobs_type_paused{type="test.record"} 1.0' in body
    assert 'jobs_type_paused{type="test.noop"} 0.0' in body
