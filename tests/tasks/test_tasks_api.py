"""Django's Tasks API (django_tasks) on our queue, as the API documents it, with a real runworker."""

import builtins
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone
from django_tasks import TaskResultStatus, default_task_backend
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist, TaskResultMismatch
from django_tasks.signals import task_enqueued

from jobs.api import enqueue
from jobs.exceptions import JobTimeout, WorkerLost
from jobs.models import DeadLetter, Job, JobStatus
from jobs.tasks_backend import JobsBackend
from jobs.testing import immediate
from tests.testapp import tasks
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def finished(result) -> bool:
    result.refresh()
    return result.is_finished


def wait_finished(result, timeout: float = 20.0) -> None:
    wait_for(lambda: finished(result), timeout=timeout, message=f"task result {result.id} finished")


def wait_told_finished(result) -> None:
    """task_finished follows the commit of the final outcome: wait until the receiver recorded it."""
    wait_finished(result)
    wait_for(
        lambda: Run.objects.filter(job_id=result.id, key__startswith="finished:").exists(),
        message=f"task_finished for {result.id}",
    )


# -- enqueue and results -------------------------------------------------------------------------


def test_enqueued_task_is_a_ready_job_named_for_its_module_path():
    result = tasks.add.enqueue(2, b=3)
    job = Job.objects.get()
    assert result.id == str(job.id)
    assert job.type == "task:tests.testapp.tasks.add"
    assert job.payload == {"args": [2], "kwargs": {"b": 3}, "run_after": None, "backend": "default"}
    assert (job.queue, job.priority, job.status) == ("default", 0, JobStatus.PENDING)
    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert (result.args, result.kwargs, result.backend) == ([2], {"b": 3}, "default")
    assert result.enqueued_at == job.created_at and result.attempts == 0
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value


def test_runworker_runs_the_task_and_get_result_reports_its_return_value(workers):
    result = tasks.add.enqueue(2, b=3)
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1 and result.errors == []
    assert result.started_at <= result.finished_at and result.last_attempted_at == result.started_at
    again = tasks.add.get_result(result.id)
    assert (again.status, again.return_value, again.args, again.kwargs) == (
        TaskResultStatus.SUCCESSFUL,
        5,
        [2],
        {"b": 3},
    )
    assert default_task_backend.get_result(result.id).return_value == 5


def test_refresh_follows_a_task_from_ready_to_running_to_successful(workers):
    result = tasks.hold.enqueue("h")
    assert result.status == TaskResultStatus.READY
    workers.start()
    wait_for(lambda: finished(result) or result.status == TaskResultStatus.RUNNING, message="running")
    assert result.status == TaskResultStatus.RUNNING and result.attempts == 1
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    Run.objects.create(key="release:h", job_id=0, attempt=0, pid=0, started_at=timezone.now())
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == "released"


def test_context_carries_the_result_id_and_the_attempt_number(workers):
    result = tasks.record_run.enqueue(key="ctx")
    workers.start()
    wait_finished(result)
    assert result.return_value["result_id"] == result.id
    assert result.return_value["attempt"] == 1
    assert Run.objects.get(key="ctx").job_id == int(result.id)


def test_async_task_runs_on_the_worker(workers):
    result = tasks.double.enqueue(21)
    workers.start()
    wait_finished(result)
    assert result.return_value == 42


def test_aenqueue_and_aget_result_work_from_async_code():
    async def enqueue_and_fetch():
        result = await tasks.add.aenqueue(1, 2)
        return result, await tasks.add.aget_result(result.id)

    # A thread of its own: no event loop is running there, whatever an earlier test left in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        result, fetched = pool.submit(async_to_sync(enqueue_and_fetch)).result(timeout=30)
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY


def test_enqueue_sends_task_enqueued_with_the_result():
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result.id))

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 1)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(JobsBackend, result.id)]


def test_worker_sends_task_started_per_attempt_and_task_finished_once_at_the_end(workers):
    recovered = tasks.signalled.enqueue(failures=1)
    failed = tasks.signalled.enqueue(failures=5)  # more than the 3 attempts of the defaults
    workers.start()
    wait_told_finished(recovered)
    wait_told_finished(failed)

    assert signals(recovered) == [
        ("enqueued:READY", 0),
        ("started:RUNNING", 1),
        ("started:RUNNING", 2),
        ("finished:SUCCESSFUL", 2),
    ]
    assert len(set(Run.objects.filter(job_id=recovered.id).exclude(attempt=0).values_list("pid"))) == 1
    assert signals(failed) == [
        ("enqueued:READY", 0),
        ("started:RUNNING", 1),
        ("started:RUNNING", 2),
        ("started:RUNNING", 3),
        ("finished:FAILED", 3),
    ]


def signals(result) -> list[tuple[str, int]]:
    """The API's signals recorded for a task's result (tests/testapp/tasks.py), in order."""
    return list(Run.objects.filter(job_id=result.id).order_by("id").values_list("key", "attempt"))


def test_task_finished_is_sent_once_when_a_task_outlives_its_timeout(workers):
    result = tasks.stalls.enqueue(3)  # timeout 0.5 s, one attempt
    proc = workers.start("--concurrency", "1")
    wait_told_finished(result)
    assert result.errors[0].exception_class is JobTimeout
    # The handler's late return changes nothing and tells nothing.
    wait_for(lambda: "outcome ignored" in workers.output(proc), timeout=20, message="late return ignored")
    assert signals(result) == [("enqueued:READY", 0), ("started:RUNNING", 1), ("finished:FAILED", 1)]
    proc.terminate()
    assert workers.exit_code(proc, 20) == 0


def test_task_finished_is_sent_once_when_a_task_rescued_from_dead_workers_runs_out_of_attempts(workers):
    result = tasks.dies.enqueue()  # kills its worker on each of its 2 attempts
    starts = 0
    while not finished(result):
        assert starts < 6, "the task never ran out of attempts"
        proc = workers.start("--stale-after", "1")
        starts += 1
        wait_for(
            lambda p=proc: p.poll() is not None or finished(result),
            timeout=30,
            message="the worker died or the task finished",
        )
    survivor = workers.procs[-1]
    wait_told_finished(result)
    assert result.status == TaskResultStatus.FAILED and result.attempts == 2
    assert [e.exception_class for e in result.errors] == [WorkerLost, WorkerLost]
    assert signals(result) == [
        ("enqueued:READY", 0),
        ("started:RUNNING", 1),
        ("started:RUNNING", 2),
        ("finished:FAILED", 2),
    ]
    finished_by = Run.objects.get(job_id=result.id, key="finished:FAILED").pid
    assert finished_by == survivor.pid  # the worker that reaped it told the API
    survivor.terminate()
    assert workers.exit_code(survivor, 20) == 0


def test_immediate_mode_sends_enqueued_then_started_then_finished():
    with immediate():
        result = tasks.signalled.enqueue(failures=0)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == "ok"
    assert signals(result) == [("enqueued:READY", 0), ("started:RUNNING", 1), ("finished:SUCCESSFUL", 1)]


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_task_raising_system_exit_or_keyboard_interrupt_fails_on_the_worker_which_lives_on(workers, kind):
    results = [tasks.raises.enqueue(kind) for _ in range(3)]  # 3 attempts each on one thread
    proc = workers.start("--concurrency", "1")
    for result in results:
        wait_told_finished(result)
        assert result.status == TaskResultStatus.FAILED and result.attempts == 3
        assert [e.exception_class for e in result.errors] == [getattr(builtins, kind)] * 3
        assert f"{kind}" in result.errors[0].traceback
        assert signals(result)[-1] == ("finished:FAILED", 3)
        assert [key for key, _ in signals(result)].count("finished:FAILED") == 1
    after = tasks.add.enqueue(1, 1)
    wait_finished(after)
    assert after.return_value == 2
    proc.send_signal(signal.SIGTERM)
    assert workers.exit_code(proc, 30) == 0


def test_immediate_mode_gives_a_failed_result_for_a_task_raising_system_exit():
    with immediate():
        result = tasks.raises_once.enqueue("SystemExit")
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is SystemExit


def test_immediate_mode_gives_a_failed_result_for_a_task_raising_keyboard_interrupt():
    with immediate():
        result = tasks.raises_once.enqueue("KeyboardInterrupt")
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is KeyboardInterrupt


def test_backend_supports_defer_priority_async_tasks_and_results_from_any_process():
    backend = default_task_backend
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_async_task and backend.supports_get_result


def test_get_result_of_an_unknown_id_raises_result_does_not_exist():
    plain_job = enqueue("test.noop")
    for result_id in ("999999", "not-a-number", str(plain_job.id)):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(result_id)


def test_get_result_through_another_task_raises_mismatch():
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.double.get_result(result.id)


def test_immediate_mode_runs_the_task_inside_enqueue():
    with immediate():
        result = tasks.add.enqueue(20, 22)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42


# -- errors --------------------------------------------------------------------------------------


def test_exception_fails_the_task_with_its_class_and_traceback(workers):
    result = tasks.fail.enqueue("the warehouse said no")
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 1
    assert result.errors[0].exception_class is ValueError
    assert "Traceback (most recent call last)" in result.errors[0].traceback
    assert "ValueError: the warehouse said no" in result.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


def test_arguments_json_cannot_carry_are_refused_and_nothing_is_stored():
    with pytest.raises(TypeError):
        tasks.add.enqueue(datetime.now(), 1)
    with pytest.raises(TypeError):
        tasks.add.enqueue(1, b={1, 2})
    assert not Job.objects.exists()


def test_return_value_json_cannot_carry_fails_the_task_without_retrying(workers):
    result = tasks.now.enqueue()
    workers.start()
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError  # the class the API names
    assert result.attempts == 1 and Job.objects.get(id=result.id).max_attempts == 3
    assert DeadLetter.objects.get(job_id=result.id).error_class == "builtins.TypeError"


# -- priorities, run_after, queues ---------------------------------------------------------------


def test_higher_priority_runs_first():
    for key, priority in [("low", -50), ("normal", 0), ("top", 100), ("high", 10)]:
        tasks.record_run.using(priority=priority).enqueue(key)
    assert sorted(Job.objects.values_list("priority", flat=True)) == [-50, 0, 10, 100]


def test_a_worker_takes_tasks_in_priority_order(workers):
    results = {
        key: tasks.record_run.using(priority=priority).enqueue(key)
        for key, priority in [("low", -100), ("normal", 0), ("top", 100), ("high", 10)]
    }
    proc = workers.start("--concurrency", "1", "--burst")
    assert proc.wait(30) == 0, workers.output(proc)
    assert list(Run.objects.order_by("id").values_list("key", flat=True)) == ["top", "high", "normal", "low"]
    assert tasks.record_run.get_result(results["top"].id).task.priority == 100


def test_priority_outside_the_api_range_is_refused():
    with pytest.raises(InvalidTaskError, match="priority"):
        tasks.add.using(priority=101)
    assert not Job.objects.exists()


def test_run_after_holds_the_task_until_its_time(workers):
    run_after = timezone.now() + timedelta(seconds=2)
    later = tasks.record_run.using(run_after=run_after).enqueue("later")
    now = tasks.record_run.enqueue("now")
    assert later.task.run_after == run_after and later.status == TaskResultStatus.READY
    workers.start()
    wait_finished(later)
    wait_finished(now)
    assert Run.objects.get(key="later").started_at >= run_after
    assert Run.objects.get(key="now").id < Run.objects.get(key="later").id


def test_get_result_gives_back_the_task_with_its_run_after_and_backend(workers):
    run_after = timezone.now() + timedelta(hours=1)
    later = tasks.add.using(run_after=run_after, priority=7).enqueue(1, 2)
    fetched = tasks.add.get_result(later.id)
    assert fetched.task.run_after == run_after
    assert (fetched.task.backend, fetched.task.priority, fetched.backend) == ("default", 7, "default")
    # run_at moves with retries; the task's run_after stays what was asked
    failing = tasks.flaky.using(run_after=timezone.now()).enqueue("f", failures=1)
    asked = failing.task.run_after
    workers.start()
    wait_finished(failing)
    assert failing.attempts == 2 and Job.objects.get(id=failing.id).run_at > asked
    assert tasks.flaky.get_result(failing.id).task.run_after == asked


def test_naive_run_after_is_refused():
    with pytest.raises(InvalidTaskError, match="aware"):
        tasks.add.using(run_after=datetime.now() + timedelta(minutes=1))


def test_queue_name_routes_the_task_to_the_workers_of_that_queue(workers):
    default = tasks.add.enqueue(1, 1)
    mail = tasks.send_email.enqueue("ada@example.com")
    assert Job.objects.get(id=mail.id).queue == "emails"
    workers.start("--queues", "emails", "--concurrency", "1")
    wait_finished(mail)
    assert mail.return_value == "sent to ada@example.com"
    default.refresh()
    assert default.status == TaskResultStatus.READY  # due before the mail, but not this worker's queue
    workers.start("--queues", "default")
    wait_finished(default)
    assert default.return_value == 2


def test_queue_name_the_backend_does_not_list_is_refused():
    with pytest.raises(InvalidTaskError, match="Queue 'nowhere' is not valid"):
        tasks.add.using(queue_name="nowhere")
    assert not Job.objects.exists()


# -- transactions --------------------------------------------------------------------------------


def test_enqueue_in_a_rolled_back_transaction_leaves_no_job():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            tasks.add.enqueue(1, 2)
            assert Job.objects.count() == 1
            raise RuntimeError("the order failed")
    assert not Job.objects.exists()


def test_enqueue_inside_a_transaction_is_committed_with_the_rows_the_task_reads(workers):
    workers.start()
    with transaction.atomic():
        run = Run.objects.create(key="thing", job_id=0, attempt=0, pid=0, started_at=timezone.now())
        result = tasks.read_run.enqueue("thing")
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == run.id


def test_on_commit_enqueue_runs_after_the_commit_and_sees_the_committed_rows(workers):
    workers.start()
    with transaction.atomic():
        run = Run.objects.create(key="thing", job_id=0, attempt=0, pid=0, started_at=timezone.now())
        transaction.on_commit(partial(tasks.read_run.enqueue, key="thing"))
        assert not Job.objects.exists()
    job = Job.objects.get()
    result = tasks.read_run.get_result(str(job.id))
    wait_finished(result)
    assert result.return_value == run.id


def test_on_commit_enqueue_in_a_rolled_back_transaction_never_enqueues():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            transaction.on_commit(partial(tasks.add.enqueue, 1, 2))
            raise RuntimeError("the order failed")
    assert not Job.objects.exists()
