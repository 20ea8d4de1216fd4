"""Health probes: ``/healthz`` (the process answers; no database) and ``/readyz`` (the database answers
within ``HEALTH_DB_TIMEOUT`` and every migration is applied; 503 with a JSON reason otherwise).

``HealthProbeMiddleware`` answers them first in the stack for the loopback and for requests carrying
``HEALTH_PROBE_HEADER``: no session, no rate limit, no host check, no redirect to HTTPS. Anyone else
reaches the same views through the URLconf, after the usual middleware.
"""

import ipaddress
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.http import HttpRequest, HttpResponse, JsonResponse

PATHS = {"/healthz", "/readyz"}

# One thread checks the database, so a database that does not answer holds one thread, not one per
# probe; probes arriving meanwhile wait for the same answer or time out.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")
_migrations: set[tuple[str, str]] | None = None
_migrations_lock = threading.Lock()


def _known_migrations() -> set[tuple[str, str]]:
    """Every migration on disk (read once: the code does not change under a running process)."""
    global _migrations
    with _migrations_lock:
        if _migrations is None:
            _migrations = set(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)
        return _migrations


def _check_database() -> str | None:
    """None when ready, else the reason. Runs in the probe thread, with its own connection."""
    close_old_connections()
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        applied = set(MigrationRecorder(connection).applied_migrations())
        missing = sorted(_known_migrations() - applied)
        if missing:
            names = ", ".join(f"{app}.{name}" for app, name in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            return f"{len(missing)} migration(s) not applied: {names}{more}"
        return None
    except Exception as exc:
        return f"database error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    finally:
        close_old_connections()


def readiness() -> str | None:
    """None when this process can serve (database reachable, schema current), else why not."""
    timeout = settings.HEALTH_DB_TIMEOUT
    try:
        return _executor.submit(_check_database).result(timeout=timeout)
    except FutureTimeout:
        return f"database did not answer within {timeout:g}s"


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _no_store(JsonResponse({"status": "ok"}))


def readyz(request: HttpRequest) -> HttpResponse:
    reason = readiness()
    if reason is None:
        return _no_store(JsonResponse({"status": "ok"}))
    return _no_store(JsonResponse({"status": "unavailable", "reason": reason}, status=503))


VIEWS = {"/healthz": healthz, "/readyz": readyz}


def _from_loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


class HealthProbeMiddleware:
    """First in MIDDLEWARE: answers a probe from the loopback or with the probe header at once."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        header = settings.HEALTH_PROBE_HEADER
        self.meta_key = "HTTP_" + header.upper().replace("-", "_") if header else None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = VIEWS.get(request.path_info)
        if view is not None and request.method in ("GET", "HEAD"):
            if _from_loopback(request) or (self.meta_key and self.meta_key in request.META):
                return view(request)
        return self.get_response(request)
