"""Our queue's extras for tasks written for Django's Tasks API: retries, dead letters, rate limits,
timeouts and unique keys set in the backend's OPTIONS; the jobs show in admin and the dashboard."""

import subprocess
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone
from django_tasks import TaskResultStatus

from jobs import api
from jobs.api import enqueue
from jobs.exceptions import JobTimeout, UnknownJobType
from jobs.models import DeadLetter, Job, JobStatus
from jobs.tasks_backend import JobsBackend
from jobs.testing import run_jobs
from tests.staff import factories
from tests.testapp import tasks
from tests.testapp.models import Run
from tests.utils import manage_py, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def finished(result) -> bool:
    result.refresh()
    return result.is_finished


def wait_finished(result, timeout: float = 20.0) -> None:
    wait_for(lambda: finished(result), timeout=timeout, message=f"task result {result.id} finished")


def test_failed_attempts_are_retried_and_the_context_counts_them(workers):
    result = tasks.flaky.enqueue("f", failures=2)
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "ok on attempt 3"
    assert result.attempts == 3 and Job.objects.get(id=result.id).max_attempts == 4
    assert [e.exception_class for e in result.errors] == [RuntimeError, RuntimeError]
    assert list(Run.objects.order_by("id").values_list("attempt", flat=True)) == [1, 2, 3]


def test_a_task_that_exhausts_its_attempts_is_dead_lettered_and_a_requeue_runs_it_again(workers):
    result = tasks.fail_unless_fixed.enqueue("order-1")
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3 and len(result.errors) == 3  # the defaults in OPTIONS
    assert result.errors[-1].exception_class is LookupError
    dead = DeadLetter.objects.get(job_id=result.id)
    assert (dead.type, dead.error_class) == (
        "task:tests.testapp.tasks.fail_unless_fixed",
        "builtins.LookupError",
    )

    Run.objects.create(key="fixed:order-1", job_id=0, attempt=0, pid=0, started_at=timezone.now())
    again = tasks.fail_unless_fixed.get_result(str(api.requeue(dead.id).id))
    wait_finished(again)
    assert again.status == TaskResultStatus.SUCCESSFUL and again.return_value == "fixed"


def test_rate_limit_from_options_holds_across_two_workers(workers):
    results = [tasks.limited.enqueue(str(i)) for i in range(15)]
    for _ in range(2):
        workers.start("--concurrency", "3")
    for result in results:
        wait_finished(result, timeout=30)
    assert {r.status for r in results} == {TaskResultStatus.SUCCESSFUL}
    starts = sorted(
        Job.objects.filter(type="task:tests.testapp.tasks.limited").values_list("started_at", flat=True)
    )
    worst = max(sum(1 for s in starts if t <= s < t + timedelta(seconds=1)) for t in starts)
    assert worst <= 5, f"{worst} starts in one second"


def test_timeout_from_options_fails_a_task_that_runs_too_long(workers):
    result = tasks.too_slow.enqueue(10)
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is JobTimeout and result.attempts == 1


def test_an_async_task_past_its_timeout_is_cancelled_on_the_worker(workers):
    result = tasks.async_stalls.enqueue("a")
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is JobTimeout and result.attempts == 1
    # Its coroutine was cancelled (not left waiting in the worker), and it saw the ORM meanwhile.
    wait_for(lambda: Run.objects.filter(key="cancelled:a").exists(), timeout=30, message="cancelled")


def test_unique_key_from_options_returns_the_waiting_task_instead_of_a_second(workers):
    first = tasks.charge_reminder.enqueue(order_id=7)
    assert tasks.charge_reminder.enqueue(order_id=7).id == first.id
    other = tasks.charge_reminder.enqueue(order_id=8)
    assert other.id != first.id
    assert Job.objects.get(id=first.id).unique_key == "charge-reminder:7"
    workers.start()
    wait_finished(first)
    wait_finished(other)
    assert Run.objects.filter(key="reminder:7").count() == 1
    assert tasks.charge_reminder.enqueue(order_id=7).id != first.id  # the key is free once it finished


def test_every_process_registers_the_tasks_configured_in_options_at_startup():
    code = (
        "import sys; from jobs.registry import job_types;"
        " print(job_types()['task:tests.testapp.tasks.limited'].rate_limit,"
        " 'tests.testapp.tasks' in sys.modules)"
    )
    out = subprocess.run(
        [*manage_py(), "shell", "--no-imports", "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5/s False"  # known before the module declaring the task is imported


def test_tasks_without_options_get_the_defaults_and_are_resolved_by_the_worker(workers):
    result = tasks.add.enqueue(1, 2)
    job = Job.objects.get(id=result.id)
    assert job.max_attempts == 3
    workers.start()
    wait_finished(result)
    assert result.return_value == 3


def test_a_job_naming_a_task_that_no_longer_imports_is_dead_lettered(workers):
    with pytest.raises(UnknownJobType):
        enqueue("task:tests.testapp.tasks.removed", {"args": []})
    job = Job.objects.create(type="task:tests.testapp.tasks.removed", payload={"args": [], "kwargs": {}})
    workers.start()
    wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.DEAD, message="dead lettered")
    assert DeadLetter.objects.get(job_id=job.id).error_class == "jobs.exceptions.UnknownJobType"


def test_unknown_or_malformed_options_are_refused_when_the_backend_is_created():
    for options in (
        {"retries": 3},
        {"defaults": {"rate_limit": "1/s"}},
        {"tasks": {"tests.testapp.tasks.add": {"max_tries": 2}}},
        {"tasks": {"tests.testapp.tasks.add": {"rate_limit": "often"}}},
        {"tasks": {"tests.testapp.tasks.add": {"backoff": {"base": 1, "slope": 2}}}},
    ):
        with pytest.raises(ImproperlyConfigured):
            JobsBackend("checked", {"OPTIONS": options})


def test_task_jobs_show_in_the_admin_and_on_the_dashboard_with_their_error():
    failed = tasks.fail.enqueue("no stock for sku-42")
    waiting = tasks.send_email.enqueue("ada@example.com")
    run_jobs(queues=["default"])
    client = Client()
    client.force_login(factories.support_user())
    listing = client.get("/admin/jobs/job/").content.decode()
    assert "task:tests.testapp.tasks.fail" in listing and "task:tests.testapp.tasks.send_email" in listing
    page = client.get(f"/admin/jobs/job/{failed.id}/change/").content.decode()
    assert "ValueError" in page and "no stock for sku-42" in page
    data = client.get("/staff/jobs/stats.json").json()
    emails = next(q for q in data["queues"] if q["name"] == "emails")
    assert emails["pending"] == 1
    assert tasks.send_email.get_result(waiting.id).status == TaskResultStatus.READY
