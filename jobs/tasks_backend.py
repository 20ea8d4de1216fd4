"""A backend for Django's Tasks API (``django_tasks``; ``django.tasks`` from Django 6) on our queue.

    TASKS = {"default": {"BACKEND": "jobs.tasks_backend.JobsBackend", "OPTIONS": {...}}}

A task enqueued through the API is a job of type ``task:<module path>`` whose payload holds the call's
arguments; ``runworker`` runs it like any job (retries, dead letters, timeouts, admin), and the result
id is the job's id. OPTIONS add what the API has no words for::

    "OPTIONS": {
        "defaults": {"max_attempts": 3, "backoff": {"base": 5, "cap": 3600}, "timeout": 300},
        "tasks": {
            "shop.tasks.send_newsletter": {
                "max_attempts": 5, "backoff": {"base": 2, "cap": 60}, "timeout": 30,
                "rate_limit": "10/s", "unique_key": "shop.tasks.newsletter_key",
            },
        },
    }

``unique_key`` names a function called with the task's arguments; while an unfinished job holds the
key it returns, enqueueing returns that job's result instead of storing another.

The job types of tasks listed under ``tasks`` are registered when the backend is created, which
``JobsConfig.ready`` does in every process: a worker must know a rate limit before it claims. Other
tasks are resolved by module path when a worker first meets one.
"""

import dataclasses
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from inspect import iscoroutinefunction
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_tasks import task_backends
from django_tasks.backends.base import BaseTaskBackend
from django_tasks.base import (
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
)
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued, task_finished, task_started
from django_tasks.utils import get_module_path, normalize_json
from pydantic import BaseModel
from typing_extensions import ParamSpec

from jobs import api
from jobs.engine import mark_permanent
from jobs.exceptions import JobCancelled, PermanentError
from jobs.execution import JobContext
from jobs.models import Job, JobStatus
from jobs.registry import Backoff, JobType, job, job_types, parse_rate, register_resolver
from jobs.signals import job_finished

log = logging.getLogger("jobs.tasks")

T = TypeVar("T")
P = ParamSpec("P")

PREFIX = "task:"
MAX_TYPE_LENGTH = Job._meta.get_field("type").max_length

TASK_OPTIONS = {"max_attempts", "backoff", "timeout", "rate_limit", "unique_key"}
# No rate limit by default: a type resolved on first sight cannot hold one (see register_resolver).
DEFAULT_OPTIONS = {"max_attempts", "backoff", "timeout"}

STATUSES = {
    JobStatus.BLOCKED: TaskResultStatus.READY,
    JobStatus.PENDING: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.DEAD: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


class TaskCall(BaseModel):
    """The payload of a task's job: the arguments it was enqueued with, as JSON, and what the task said
    of itself that the job's columns cannot keep (``run_at`` moves with each retry)."""

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    run_after: datetime | None = None
    backend: str | None = None


def job_type_name(module_path: str) -> str:
    return f"{PREFIX}{module_path}"


class JobsBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - {"defaults", "tasks"}
        if unknown:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: unknown keys {sorted(unknown)}")
        self.defaults = _checked(self.options.get("defaults", {}), DEFAULT_OPTIONS, f"{alias}: defaults")
        self.task_options = {
            path: _checked(opts, TASK_OPTIONS, f"{alias}: tasks[{path!r}]")
            for path, opts in self.options.get("tasks", {}).items()
        }
        for path in self.task_options:
            self.register(path)

    # -- job types ---------------------------------------------------------------------------

    def options_for(self, module_path: str) -> dict:
        return {**self.defaults, **self.task_options.get(module_path, {})}

    def register(self, module_path: str) -> JobType:
        """Register (or refresh) the job type of a task; its module is imported only when it runs."""
        opts = self.options_for(module_path)
        backoff = opts.get("backoff")
        name = job_type_name(module_path)
        job(
            name,
            payload=TaskCall,
            max_attempts=opts.get("max_attempts", 3),
            backoff=Backoff(**backoff) if backoff is not None else None,
            timeout=opts.get("timeout", 300.0),
            rate_limit=opts.get("rate_limit"),
        )(_handler(module_path))
        return job_types()[name]

    def job_type(self, module_path: str) -> JobType:
        return job_types().get(job_type_name(module_path)) or self.register(module_path)

    # -- the Tasks API -----------------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if len(job_type_name(task.module_path)) > MAX_TYPE_LENGTH:
            limit = MAX_TYPE_LENGTH - len(PREFIX)
            raise InvalidTaskError(f"Task module path too long for a job type ({limit} characters at most).")

    def enqueue(
        self,
        task: Task[P, T],
        args: P.args,  # type: ignore[valid-type]
        kwargs: P.kwargs,  # type: ignore[valid-type]
    ) -> TaskResult[T]:
        """Store the task as a job in the caller's transaction: a rollback leaves no job, and no worker
        sees it before the commit. Raises what the API raises (InvalidTaskError; TypeError or
        ValueError for arguments JSON cannot carry), nothing stored."""
        self.validate_task(task)
        args, kwargs = normalize_json(args), normalize_json(kwargs)
        job_type = self.job_type(task.module_path)
        unique_key = None
        key_function = self.options_for(task.module_path).get("unique_key")
        if key_function is not None:
            unique_key = import_string(key_function)(*args, **kwargs)
        # In immediate mode the task runs once the API has been told it was enqueued, not before.
        with api.immediate_after():
            new = api.enqueue(
                job_type.name,
                {"args": args, "kwargs": kwargs, "run_after": task.run_after, "backend": task.backend},
                priority=task.priority,
                queue=task.queue_name,
                run_at=task.run_after,
                unique_key=None if unique_key is None else str(unique_key),
            )
            result = self.to_result(new, task)
            task_enqueued.send(type(self), task_result=result)
        if api.runs_immediately():
            new.refresh_from_db()
            result = self.to_result(new, task)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        found = Job.objects.filter(id=job_id, type__startswith=PREFIX).first()
        if found is None:
            raise TaskResultDoesNotExist(result_id)
        return self.to_result(found)

    # -- jobs as results ---------------------------------------------------------------------

    def to_result(self, row: Job, task: Task | None = None) -> TaskResult:
        """The job as the API's result: its status, errors, attempts and return value."""
        if task is None:
            task = _stored_task(row)
        errors = [_task_error(entry) for entry in row.errors]
        if row.status == JobStatus.CANCELLED and not any(
            e.exception_class_path == get_module_path(JobCancelled) for e in errors
        ):
            # Cancelled before it ran (by staff, or because a job it waited on failed): say why.
            errors.append(
                TaskError(exception_class_path=get_module_path(JobCancelled), traceback=row.status_reason)
            )
        # One id per attempt: the worker named by each failed attempt, then the one holding the job.
        worker_ids = [entry.get("worker") or "" for entry in row.errors][: row.attempts]
        worker_ids += [row.locked_by or ""] * (row.attempts - len(worker_ids))
        result = TaskResult(
            task=task,
            id=str(row.id),
            status=STATUSES[row.status],
            enqueued_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            last_attempted_at=row.started_at,
            args=row.payload.get("args", []),
            kwargs=row.payload.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=worker_ids,
        )
        if row.status == JobStatus.SUCCEEDED:
            object.__setattr__(result, "_return_value", row.result)
        return result


def _checked(options: dict, allowed: set[str], where: str) -> dict:
    unknown = set(options) - allowed
    if unknown:
        raise ImproperlyConfigured(
            f"TASKS {where}: unknown options {sorted(unknown)}; known: {sorted(allowed)}"
        )
    if "rate_limit" in options:
        try:
            parse_rate(options["rate_limit"])
        except ValueError as exc:
            raise ImproperlyConfigured(f"TASKS {where}: {exc}") from None
    if "backoff" in options:
        try:
            Backoff(**options["backoff"])
        except TypeError as exc:
            raise ImproperlyConfigured(f"TASKS {where}: backoff: {exc}") from None
    return dict(options)


def _task_error(entry: dict) -> TaskError:
    traceback = entry.get("traceback") or f"{entry.get('exception', '')}: {entry.get('message', '')}"
    return TaskError(exception_class_path=entry.get("exception") or "builtins.Exception", traceback=traceback)


def _import_task(module_path: str) -> Task:
    found = import_string(module_path)
    if not isinstance(found, Task):
        raise ImportError(f"{module_path} is not a task")
    return found


def _stored_task(row: Job) -> Task:
    """The task of a job as it was enqueued: its priority and queue (the job's, which staff may have
    changed since), ``run_after`` and backend."""
    module_path = row.type.removeprefix(PREFIX)
    try:
        task = _import_task(module_path)
    except ImportError as exc:
        raise TaskResultDoesNotExist(f"{row.id}: task {module_path} cannot be imported ({exc})") from None
    call = TaskCall.model_validate(row.payload)
    changes = dict(
        priority=max(TASK_MIN_PRIORITY, min(TASK_MAX_PRIORITY, row.priority)),
        queue_name=row.queue,
        run_after=call.run_after,
    )
    if call.backend is not None:  # None: stored before the backend was recorded
        changes["backend"] = call.backend
    try:
        return dataclasses.replace(task, **changes)
    except InvalidTaskError:
        # Moved by staff to a queue the backend does not list (or a backend since removed).
        return dataclasses.replace(task, run_after=call.run_after)


def _backend_for(task: Task) -> JobsBackend:
    backend = task.get_backend()
    if isinstance(backend, JobsBackend):
        return backend
    # Declared for another backend and enqueued here with .using(backend=...): any of ours will do.
    for alias in settings.TASKS:
        backend = task_backends[alias]
        if isinstance(backend, JobsBackend):
            return backend
    raise ImproperlyConfigured("no TASKS backend is a jobs.tasks_backend.JobsBackend")


def _handler(module_path: str) -> Callable[[TaskCall, JobContext], Any]:
    def run_task(call: TaskCall, ctx: JobContext) -> Any:
        return run(module_path, call, ctx)

    return run_task


def run(module_path: str, call: TaskCall, ctx: JobContext) -> Any:
    """Run a task's job on a worker: tell the API it started, call the function, return JSON (for an
    ``async def`` task, a coroutine returning it, which the worker awaits: see jobs.aio).

    ``task_finished`` is sent once the job's final outcome is recorded (``_send_task_finished``), so
    that a timeout, a rescue from a dead worker or a lost claim are told as the API sees them.
    """
    try:
        task = _import_task(module_path)
    except ImportError as exc:
        raise PermanentError(f"task {module_path} cannot be imported: {exc}") from exc
    stored = _stored_task(ctx.job)
    backend = _backend_for(stored)
    result = backend.to_result(ctx.job, stored)
    object.__setattr__(result, "status", TaskResultStatus.RUNNING)
    task_started.send(type(backend), task_result=result)
    args = (TaskContext(task_result=result), *call.args) if task.takes_context else call.args
    if iscoroutinefunction(task.func):
        # The worker runs the coroutine (jobs.aio): its timeout and a cancel stop it at an await.
        return _returned_async(module_path, task.func(*args, **call.kwargs))
    return _returned(module_path, task.call(*args, **call.kwargs))


async def _returned_async(module_path: str, coroutine: Coroutine) -> Any:
    return _returned(module_path, await coroutine)


def _returned(module_path: str, raw: Any) -> Any:
    try:
        return normalize_json(raw)
    except (TypeError, ValueError) as exc:
        # The class the API names for it; running the task again would return the same.
        raise mark_permanent(TypeError(f"task {module_path} returned {type(raw).__name__}: {exc}")) from exc


def _send_task_finished(sender, jobs: list[Job], **kwargs) -> None:
    """``task_finished`` for each task among jobs whose final outcome was just recorded, built from
    the recorded row (status, errors, return value)."""
    ids = [job.id for job in jobs if job.type.startswith(PREFIX)]
    if not ids:
        return
    for row in Job.objects.filter(id__in=ids).order_by("id"):
        try:
            task = _stored_task(row)
        except TaskResultDoesNotExist as exc:
            log.warning("job %s: task_finished not sent: %s", row.id, exc)
            continue
        backend = _backend_for(task)
        task_finished.send(type(backend), task_result=backend.to_result(row, task))


def _resolve(name: str) -> JobType | None:
    """A worker meets a task no backend registered up front: its declaring backend's defaults."""
    module_path = name.removeprefix(PREFIX)
    try:
        task = _import_task(module_path)
        return _backend_for(task).register(module_path)
    except (ImportError, ImproperlyConfigured):
        return None


def create_backends() -> None:
    """Create every JobsBackend of TASKS in this process, registering the job types they configure."""
    for alias, params in settings.TASKS.items():
        try:
            backend_class = import_string(params.get("BACKEND", ""))
        except ImportError:
            continue  # django_tasks reports it when the backend is used
        if isinstance(backend_class, type) and issubclass(backend_class, JobsBackend):
            task_backends[alias]


register_resolver(PREFIX, _resolve)
job_finished.connect(_send_task_finished, dispatch_uid="jobs.tasks_backend.task_finished")
