"""The live dashboard and its refresh endpoints: staff only, cheap queries, no payloads."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import staff
from jobs.models import CronSchedule, JobStat, JobStatus
from tests.staff import factories

pytestmark = pytest.mark.django_db

URLS = ["/staff/jobs/", "/staff/jobs/panels/", "/staff/jobs/stats.json"]


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(factories.support_user())
    return client


@pytest.mark.parametrize("url", URLS)
def test_anonymous_visitors_are_sent_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", URLS)
def test_signed_in_customers_get_403_and_no_payload(client, url):
    factories.job(payload={"key": "secret-customer-address"})
    client.force_login(factories.user("customer", staff=False))
    response = client.get(url)
    assert response.status_code == 403 and b"secret-customer-address" not in response.content


def test_dashboard_shows_depth_per_queue_and_status_and_lag(staff_client):
    old = timezone.now() - timedelta(minutes=5)
    factories.job(status=JobStatus.PENDING, run_at=old, queue="mail")
    factories.job(status=JobStatus.PENDING, run_at=timezone.now() + timedelta(hours=1), queue="mail")
    factories.job(status=JobStatus.RUNNING, queue="mail")
    factories.job(status=JobStatus.BLOCKED, queue="mail")
    data = staff_client.get("/staff/jobs/stats.json").json()
    mail = next(q for q in data["queues"] if q["name"] == "mail")
    assert (mail["blocked"], mail["pending"], mail["due"], mail["running"]) == (1, 2, 1, 1)
    assert 299 <= mail["lag_seconds"] < 330
    page = staff_client.get("/staff/jobs/").content.decode()
    assert 'data-queue="mail"' in page


def test_paused_queue_shows_as_paused(staff_client):
    staff.pause_queue("cli", "default")
    panels = staff_client.get("/staff/jobs/panels/").content.decode()
    row = re.search(r'<tr class="queue" data-queue="default">.*?</tr>', panels, re.S).group(0)
    assert "paused" in row


def test_paused_type_shows_on_the_dashboard_and_in_its_json(staff_client):
    staff.pause_type("cli", "test.record")
    panels = staff_client.get("/staff/jobs/panels/").content.decode()
    paused = re.search(r'<p id="paused-types">.*?</p>', panels, re.S).group(0)
    assert 'data-type="test.record"' in paused and "test.noop" not in paused
    data = staff_client.get("/staff/jobs/stats.json").json()
    assert [t["name"] for t in data["paused_types"]] == ["test.record"]
    staff.resume_type("cli", "test.record")
    assert 'id="paused-types"' not in staff_client.get("/staff/jobs/panels/").content.decode()


def test_jobs_due_long_ago_and_still_waiting_are_listed_with_why(staff_client):
    long_ago = timezone.now() - timedelta(minutes=10)
    held = factories.job(type="test.record", status=JobStatus.PENDING, run_at=long_ago)
    factories.job(type="test.noop", status=JobStatus.PENDING)  # just due: not listed
    staff.pause_type("cli", "test.record")
    panels = staff_client.get("/staff/jobs/panels/").content.decode()
    listed = re.search(r'<table id="waiting-jobs">.*?</table>', panels, re.S).group(0)
    assert re.findall(r'data-job="(\d+)"', listed) == [str(held.pk)]
    assert 'data-code="type_paused"' in listed and 'data-code="no_worker"' in listed


def test_charts_are_inline_svg_with_bars_for_finished_jobs(staff_client):
    factories.finished(3, minutes_ago=2)
    factories.finished(1, minutes_ago=2, status=JobStatus.DEAD)
    factories.finished(5, minutes_ago=180)
    page = staff_client.get("/staff/jobs/").content.decode()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from another host
    minute = re.search(r'<svg id="chart-per-minute".*?</svg>', page, re.S).group(0)
    hour = re.search(r'<svg id="chart-per-hour".*?</svg>', page, re.S).group(0)
    assert 'data-total="4"' in minute and 'class="bar bar-dead"' in minute
    assert 'data-total="9"' in hour
    assert "failure rate <strong>25.0%</strong>" in page


def test_dead_letters_schedules_and_workers_are_shown(staff_client):
    _, dead = factories.dead_job()
    schedule = CronSchedule.objects.create(
        name="nightly_export", expression="0 0 * * *", job_type="test.noop"
    )
    staff.run_schedule("cli", schedule)
    factories.worker(current_jobs=[], heartbeat_seconds_ago=4)
    panels = staff_client.get("/staff/jobs/panels/").content.decode()
    assert '<span class="count">1</span> open' in panels
    assert f"/admin/jobs/deadletter/{dead.pk}/change/" in panels and "PermanentError" in panels
    assert "nightly_export" in panels and ">pending</a>" in panels
    assert "Workers: 1 alive" in panels and "host-1 / 1234" in panels
    assert re.search(r"<td>[45]s ago</td>", panels)


def test_per_type_totals_come_from_the_counters(staff_client):
    JobStat.objects.create(type="send_order_confirmation", outcome="started", count=7)
    JobStat.objects.create(type="send_order_confirmation", outcome="succeeded", bucket="0.5", count=6)
    JobStat.objects.create(type="send_order_confirmation", outcome="dead", bucket="1", count=1)
    data = staff_client.get("/staff/jobs/stats.json").json()
    assert data["counters"]["send_order_confirmation"] == {"started": 7, "succeeded": 6, "dead": 1}


def test_refresh_never_counts_the_whole_job_table(staff_client):
    factories.finished(20, minutes_ago=60 * 24 * 3)
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get("/staff/jobs/panels/").status_code == 200
    on_jobs = [q["sql"] for q in queries.captured_queries if 'FROM "jobs_job"' in q["sql"]]
    assert on_jobs
    for sql in on_jobs:
        where = sql.split("WHERE", 1)[1] if "WHERE" in sql else ""
        assert '"jobs_job"."status"' in where, sql
        assert any(c in where for c in ("finished_at", "'pending'", "IN ('blocked'", "'running'")), sql


def test_dashboard_never_shows_payloads(staff_client):
    factories.job(status=JobStatus.PENDING, payload={"key": "secret-customer-address"})
    factories.dead_job(payload={"key": "secret-card-holder"})
    for url in URLS:
        body = staff_client.get(url).content
        assert b"secret-customer-address" not in body and b"secret-card-holder" not in body
