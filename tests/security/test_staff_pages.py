"""Admin, the queue dashboard and the metrics are closed to anonymous visitors and to signed-in customers.
The URLs come from the URL resolver, so a page added later is covered without touching this file."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from jobs.api import enqueue
from jobs.models import Job
from tests.security.urls import urls_under

pytestmark = pytest.mark.django_db

PUBLIC = {"admin:login", "admin:logout"}  # the login form itself, and logout (POST only)
SECRET = "secret-customer-address-221B"


def staff_urls() -> list[tuple[str, str]]:
    urls = {**urls_under("admin/"), **urls_under("staff/jobs/")}
    return sorted((name, url) for name, url in urls.items() if name not in PUBLIC)


STAFF_URLS = staff_urls()


@pytest.fixture(autouse=True)
def a_job_with_a_private_payload():
    return enqueue("test.record", {"key": SECRET})


@pytest.fixture
def customer():
    client = Client()
    client.force_login(User.objects.create_user("customer", "c@example.com", "pw"))
    return client


def refused(response) -> bool:
    if response.status_code == 302:
        return response["Location"].startswith("/admin/login/")
    return response.status_code in (401, 403)


def test_the_enumeration_finds_the_staff_pages():
    names = {name for name, _ in STAFF_URLS}
    assert {"admin:index", "admin:jobs_job_changelist", "admin:jobs_deadletter_change"} <= names
    assert {"jobs:dashboard", "jobs:dashboard-panels", "jobs:stats-json", "jobs:metrics"} <= names
    assert len(STAFF_URLS) > 50


@pytest.mark.parametrize("name,url", STAFF_URLS, ids=[n for n, _ in STAFF_URLS])
def test_anonymous_visitors_are_refused(client, name, url):
    for response in (client.get(url), client.post(url, {"action": "delete_selected", "_selected_action": 1})):
        assert refused(response), (response.status_code, response.get("Location"))
        assert SECRET.encode() not in response.content
    assert Job.objects.count() == 1


@pytest.mark.parametrize("name,url", STAFF_URLS, ids=[n for n, _ in STAFF_URLS])
def test_signed_in_customers_who_are_not_staff_are_refused(customer, name, url):
    for response in (
        customer.get(url),
        customer.post(url, {"action": "delete_selected", "_selected_action": 1}),
    ):
        assert refused(response), (response.status_code, response.get("Location"))
        assert SECRET.encode() not in response.content
    assert Job.objects.count() == 1


def test_an_inactive_staff_account_is_refused():
    client = Client()
    user = User.objects.create_user("former", "f@example.com", "pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    user.is_active = False
    user.save()
    for url in ("/admin/", "/staff/jobs/", "/staff/jobs/stats.json", "/staff/jobs/metrics"):
        assert refused(client.get(url)), url


def test_superusers_do_get_in(admin_client):
    """The control: the pages above are refused because of who asks, not because they are broken."""
    assert admin_client.get("/admin/").status_code == 200
    assert admin_client.get("/staff/jobs/").status_code == 200
    assert admin_client.get("/staff/jobs/metrics").status_code == 200


def test_metrics_with_a_bearer_token_are_refused_when_no_token_is_configured(client, settings):
    settings.JOBS_METRICS_TOKEN = ""
    assert client.get("/staff/jobs/metrics", headers={"Authorization": "Bearer "}).status_code == 401
