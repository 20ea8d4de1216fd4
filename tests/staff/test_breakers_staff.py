"""Open circuit breakers as staff see them: the admin list and its close action (audited, needs the
change permission), the dashboard panel and its JSON, the Prometheus gauge."""

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from jobs import db, engine
from jobs.models import AuditEntry, BreakerState
from tests.staff import factories

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def open_breakers():
    """test.breaker open, and one key of test.breaker_keyed half-open, as failures would leave them."""
    now = db.now()
    enqueue_held()
    return [
        BreakerState.objects.create(
            type="test.breaker", state="open", failures=[now.isoformat()] * 3, opened_at=now, probe_at=now
        ),
        BreakerState.objects.create(
            type="test.breaker_keyed", key="endpoint:7", state="half_open", opened_at=now, probe_job_id=123
        ),
    ]


def enqueue_held():
    from jobs.api import enqueue

    enqueue("test.breaker", {"flag": "/nonexistent"})


def close_action(client, ids):
    data = {"action": "close_breakers", ACTION_CHECKBOX_NAME: [str(i) for i in ids], "index": 0}
    return client.post("/admin/jobs/breakerstate/", data, follow=True)


def test_staff_see_open_breakers_in_the_admin_and_close_one_audited(open_breakers):
    client = client_for(factories.operator())
    page = client.get("/admin/jobs/breakerstate/").content.decode()
    assert "test.breaker" in page and "endpoint:7" in page and "Half-open" in page
    response = close_action(client, [open_breakers[0].pk])
    assert "Closed: test.breaker" in response.content.decode()
    row = BreakerState.objects.get(pk=open_breakers[0].pk)
    assert row.state == "closed" and row.failures == [] and row.changed_by == "operator"
    entry = AuditEntry.objects.get(action="close breaker")
    assert (entry.target_kind, entry.target, entry.actor) == (
        AuditEntry.TargetKind.TYPE,
        "test.breaker",
        "operator",
    )
    assert [j.type for j in engine.claim("w1", 5)] == ["test.breaker"]  # claimed again at once
    assert BreakerState.objects.get(pk=open_breakers[1].pk).state == "half_open"


def test_the_close_action_names_the_key_and_skips_closed_breakers(open_breakers):
    client = client_for(factories.operator())
    BreakerState.objects.filter(pk=open_breakers[0].pk).update(state="closed")
    response = close_action(client, [b.pk for b in open_breakers]).content.decode()
    assert "Closed: test.breaker_keyed [endpoint:7]" in response
    assert "Not open (left as they were): test.breaker" in response
    assert AuditEntry.objects.get(details="key endpoint:7").target == "test.breaker_keyed"


def test_support_staff_cannot_close_a_breaker(open_breakers):
    client = client_for(factories.support_user())
    assert client.get("/admin/jobs/breakerstate/").status_code == 200
    close_action(client, [open_breakers[0].pk])
    assert BreakerState.objects.get(pk=open_breakers[0].pk).state == "open"
    assert not AuditEntry.objects.exists()
    assert client.get(f"/admin/jobs/breakerstate/{open_breakers[0].pk}/change/").status_code == 200
    assert client.get("/admin/jobs/breakerstate/add/").status_code == 403


def test_open_breakers_show_on_the_dashboard_and_in_its_json(open_breakers):
    client = client_for(factories.support_user())
    panels = client.get("/staff/jobs/panels/").content.decode()
    table = re.search(r'<table id="open-breakers">.*?</table>', panels, re.S).group(0)
    assert 'data-type="test.breaker"' in table and 'data-key="endpoint:7"' in table
    assert "probe <a" in table  # the half-open one names its probe
    assert re.search(r'<li class="alert" data-kind="breaker" data-subject="test.breaker">', panels)
    data = client.get("/staff/jobs/stats.json").json()
    assert [(b["type"], b["key"], b["state"]) for b in data["open_breakers"]] == [
        ("test.breaker", "", "open"),
        ("test.breaker_keyed", "endpoint:7", "half_open"),
    ]
    BreakerState.objects.update(state="closed")
    assert 'id="open-breakers"' not in client.get("/staff/jobs/panels/").content.decode()


def test_metrics_count_open_breakers_per_type(client, settings, open_breakers):
    settings.JOBS_METRICS_TOKEN = "s3cret-token"
    body = client.get(
        "/staff/jobs/metrics", headers={"Authorization": "Bearer s3cret-token"}
    ).content.decode()
    assert 'jobs_breakers_open{type="test.breaker"} 1.0' in body
    assert 'jobs_breakers_open{type="test.breaker_keyed"} 1.0' in body
    BreakerState.objects.update(state="closed")
    body = client.get(
        "/staff/jobs/metrics", headers={"Authorization": "Bearer s3cret-token"}
    ).content.decode()
    assert 'jobs_breakers_open{type="test.breaker"} 0.0' in body
