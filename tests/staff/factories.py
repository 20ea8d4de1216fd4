"""Jobs, dead letters, schedules and staff users for the staff-tools tests."""

from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from jobs import engine, execution
from jobs.api import enqueue
from jobs.models import DeadLetter, Job, JobStatus, WorkerProcess

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "orders/jobs.py", line 42, in send_order_confirmation\n'
    "    smtp.send(message)\n"
    "ConnectionRefusedError: [Errno 111] Connection refused\n"
)

VIEW_PERMISSIONS = [
    "view_job",
    "view_deadletter",
    "view_cronschedule",
    "view_queuestate",
    "view_jobtypestate",
    "view_breakerstate",
    "view_workerprocess",
    "view_auditentry",
]


def user(
    username: str = "staff", *, staff: bool = True, perms: list[str] = (), superuser: bool = False
) -> User:
    """A user holding ``perms`` (codenames of the jobs app)."""
    u = User.objects.create_user(
        username, f"{username}@example.com", "pw", is_staff=staff, is_superuser=superuser
    )
    if perms:
        u.user_permissions.add(*Permission.objects.filter(content_type__app_label="jobs", codename__in=perms))
    return User.objects.get(pk=u.pk)  # fresh permission cache


def support_user(username: str = "support") -> User:
    """Staff who may look at everything and change nothing."""
    return user(username, perms=VIEW_PERMISSIONS)


def operator(username: str = "operator") -> User:
    """Staff who may look, retry, cancel, requeue, discard and run schedules."""
    return user(
        username,
        perms=[
            *VIEW_PERMISSIONS,
            "retry_job",
            "cancel_job",
            "requeue_deadletter",
            "discard_deadletter",
            "run_cronschedule",
            "change_cronschedule",
            "change_queuestate",
            "add_queuestate",
            "change_jobtypestate",
            "change_breakerstate",
        ],
    )


def job(**fields) -> Job:
    """A job row as the engine would have left it; ``status`` and timestamps are taken as given."""
    fields.setdefault("type", "test.noop")
    fields.setdefault("payload", {"key": "k"})
    if fields.get("status") in (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED):
        fields.setdefault("finished_at", timezone.now())
    return Job.objects.create(**fields)


def dead_job(job_type: str = "test.permanent", payload: dict | None = None) -> tuple[Job, DeadLetter]:
    """A job that really died: enqueued and run by the engine, its handler raised PermanentError."""
    j = enqueue(job_type, payload if payload is not None else {"key": "dead"})
    for claimed in engine.claim("factory", 1, types=[job_type]):  # run only this job, not the world
        execution.run(claimed)
    j.refresh_from_db()
    assert j.status == JobStatus.DEAD, j.status
    return j, DeadLetter.objects.get(job=j)


def stale_dead_letter(
    job_type: str = "test.sleep",
    payload: dict | None = None,
    error_class: str = "jobs.exceptions.InvalidPayload",
    message: str = "invalid payload for job type 'test.sleep': seconds: Field required",
) -> DeadLetter:
    """A dead letter whose stored payload no longer validates (the type's model changed since)."""
    errors = [
        {
            "at": timezone.now().isoformat(),
            "attempt": 1,
            "exception": error_class,
            "message": message,
            "traceback": TRACEBACK,
            "worker": "host-1-abc",
        }
    ]
    payload = payload if payload is not None else {"key": "old"}
    j = job(type=job_type, payload=payload, status=JobStatus.DEAD, attempts=1, errors=errors)
    return DeadLetter.objects.create(
        job=j,
        type=job_type,
        queue=j.queue,
        payload=payload,
        attempts=1,
        max_attempts=j.max_attempts,
        errors=errors,
        error_class=error_class,
        error_message=message,
    )


def finished(
    count: int, *, minutes_ago: float, status: str = JobStatus.SUCCEEDED, job_type: str = "test.noop"
):
    """``count`` jobs that finished ``minutes_ago`` (seed data for the throughput charts)."""
    at = timezone.now() - timedelta(minutes=minutes_ago)
    Job.objects.bulk_create(
        [
            Job(
                type=job_type,
                status=status,
                created_at=at,
                run_at=at,
                started_at=at,
                finished_at=at,
                attempts=1,
            )
            for _ in range(count)
        ]
    )


def worker(
    worker_id: str = "host-1-1234-abc", *, heartbeat_seconds_ago: float = 1, **fields
) -> WorkerProcess:
    now = timezone.now()
    fields.setdefault("hostname", "host-1")
    fields.setdefault("pid", 1234)
    return WorkerProcess.objects.create(
        id=worker_id, heartbeat_at=now - timedelta(seconds=heartbeat_seconds_ago), **fields
    )
