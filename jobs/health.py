"""Is a worker on this host alive? For a container's exec probe or a monitoring check, beside the
systemd watchdog (which already restarts a worker whose loop stops notifying).

The worker's claim loop writes its ``WorkerProcess.heartbeat_at`` itself (between claims, every
``JOBS_HEARTBEAT_INTERVAL``), so a fresh heartbeat means the loop is making progress, not only that
the process exists.
"""

import socket
from dataclasses import dataclass

from django.db import DatabaseError
from django.utils import timezone

from jobs import conf
from jobs.models import WorkerProcess


@dataclass
class Health:
    ok: bool
    reason: str


def check(max_heartbeat_age: float | None = None, hostname: str | None = None) -> Health:
    """Healthy when a worker on ``hostname`` (this host) heartbeat within ``max_heartbeat_age`` seconds
    (default: ``JOBS_STALE_AFTER``, the age after which its jobs would be reclaimed)."""
    if max_heartbeat_age is None:
        max_heartbeat_age = conf.get("JOBS_STALE_AFTER")
    if max_heartbeat_age <= 0:
        raise ValueError(
            f"--max-heartbeat-age must be a positive number of seconds, not {max_heartbeat_age:g}"
        )
    hostname = hostname or socket.gethostname()
    now = timezone.now()
    try:
        workers = list(WorkerProcess.objects.filter(hostname=hostname).order_by("-heartbeat_at"))
    except DatabaseError as exc:
        return Health(
            False, f"database unavailable: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
        )
    if not workers:
        return Health(False, f"no worker registered on host {hostname}")
    freshest = workers[0]
    age = (now - freshest.heartbeat_at).total_seconds()
    if not freshest.is_alive(now, max_heartbeat_age):
        return Health(
            False,
            f"worker {freshest.id} last heartbeat {age:.1f}s ago (more than {max_heartbeat_age:g}s)",
        )
    fresh = sum(1 for w in workers if w.is_alive(now, max_heartbeat_age))
    return Health(
        True,
        f"{fresh} worker(s) on {hostname} alive; {freshest.id} heartbeat {age:.1f}s ago, "
        f"{freshest.jobs_done} job(s) done",
    )
