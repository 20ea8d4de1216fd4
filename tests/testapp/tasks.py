"""Tasks written for Django's Tasks API (django_tasks), run by the tests on a real runworker.

Nothing imports this module up front: a worker resolves each task by its module path when it meets
one, and the tasks with extras in TASKS' OPTIONS (tests/settings.py) are registered by the backend.
"""

import asyncio
import os
import signal
import time
from datetime import datetime

from asgiref.sync import sync_to_async
from django.dispatch import receiver
from django.utils import timezone
from django_tasks import TaskContext, task
from django_tasks.signals import task_enqueued, task_finished, task_started

from tests.testapp.models import Run


def record(key: str, context: TaskContext | None = None) -> Run:
    return Run.objects.create(
        key=key,
        job_id=int(context.task_result.id) if context else 0,
        attempt=context.attempt if context else 0,
        pid=os.getpid(),
        started_at=timezone.now(),
    )


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(takes_context=True)
def record_run(context: TaskContext, key: str) -> dict:
    run = record(key, context)
    return {"run": run.id, "attempt": context.attempt, "result_id": context.task_result.id}


@task(queue_name="emails")
def send_email(to: str) -> str:
    record(f"mail:{to}")
    return f"sent to {to}"


@task()
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def flaky(context: TaskContext, key: str, failures: int) -> str:
    record(key, context)
    if context.attempt <= failures:
        raise RuntimeError(f"failure on attempt {context.attempt}")
    return f"ok on attempt {context.attempt}"


@task()
def fail_unless_fixed(key: str) -> str:
    if not Run.objects.filter(key=f"fixed:{key}").exists():
        raise LookupError(f"{key} is not fixed yet")
    record(key)
    return "fixed"


@task()
async def double(n: int) -> int:
    return n * 2


@task()
def now() -> datetime:
    return timezone.now()  # not JSON: the API refuses it as a return value


@task()
def hold(key: str) -> str:
    """Runs until the test creates Run(key="release:<key>"): the test sees it running meanwhile."""
    record(key)
    deadline = time.monotonic() + 30
    while not Run.objects.filter(key=f"release:{key}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was never released")
        time.sleep(0.02)
    return "released"


@task()
def limited(key: str) -> None:
    record(key)


@task()
def too_slow(seconds: float) -> str:
    time.sleep(seconds)
    return "late"


@task()
def charge_reminder(order_id: int) -> None:
    record(f"reminder:{order_id}")


def order_key(order_id: int) -> str:
    return f"charge-reminder:{order_id}"


@task()
def read_run(key: str) -> int:
    """Reads a row its enqueuer created in the same transaction."""
    return Run.objects.get(key=key).id


@task(takes_context=True)
def signalled(context: TaskContext, failures: int) -> str:
    if context.attempt <= failures:
        raise RuntimeError(f"failure on attempt {context.attempt}")
    return "ok"


BASE_EXCEPTIONS = {"SystemExit": lambda: SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt}


@task()
def raises(kind: str) -> None:
    """A library calling sys.exit(), or a stray KeyboardInterrupt."""
    raise BASE_EXCEPTIONS[kind]()


@task()
def raises_once(kind: str) -> None:
    """As ``raises``, with a single attempt (tests/settings.py)."""
    raise BASE_EXCEPTIONS[kind]()


@task()
def stalls(seconds: float) -> str:
    """Outlives its timeout of 0.5 s (tests/settings.py), then returns: a late outcome, ignored."""
    time.sleep(seconds)
    return "late"


@task()
def dies() -> None:
    """Kills its worker on every attempt (2 attempts, tests/settings.py): rescued, then dead."""
    os.kill(os.getpid(), signal.SIGKILL)


SIGNALLED = {signalled.func, raises.func, stalls.func, dies.func}


@receiver(task_enqueued)
@receiver(task_started)
@receiver(task_finished)
def record_signal(sender, task_result, signal, **kwargs):
    """Records the API's signals for the tasks in SIGNALLED as Run rows: "started:RUNNING",
    "finished:FAILED"."""
    if task_result.task.func in SIGNALLED:
        name = {task_enqueued: "enqueued", task_started: "started", task_finished: "finished"}[signal]
        Run.objects.create(
            key=f"{name}:{task_result.status}",
            job_id=int(task_result.id),
            attempt=task_result.attempts,
            pid=os.getpid(),
            started_at=timezone.now(),
        )


@task()
async def async_stalls(key: str) -> str:
    """Waits a minute (its timeout is 0.5 s), recording Run(key="cancelled:<key>") when cancelled."""
    await sync_to_async(record)(key)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await sync_to_async(record)(f"cancelled:{key}")
        raise
    return "never cancelled"
