"""The worker and the database between them: connections kept between jobs, an outage said once,
and calls retried until the database answers while systemd hears that the worker is waiting."""

import logging
import threading
import time

from django.db import InterfaceError, OperationalError, connection, connections

from jobs import conf, retry, systemd

log = logging.getLogger("jobs.worker")

DB_ERRORS = (OperationalError, InterfaceError)


def keep_connections():
    """Keep each thread's connection between jobs: with Django's default CONN_MAX_AGE=0,
    ``close_old_connections()`` before each job would open a new one per job (a process fork on
    PostgreSQL). Health checks stay on, so a connection the database dropped is replaced before
    the next job, and every database error path closes its connection anyway. Returns a function
    putting the settings back (a worker run inside a test process)."""
    age = conf.get("JOBS_WORKER_CONN_MAX_AGE")
    saved = []
    for alias in connections:
        params = connections.settings[alias]
        saved.append((params, params.get("CONN_MAX_AGE"), params.get("CONN_HEALTH_CHECKS")))
        if not params.get("CONN_MAX_AGE"):
            params["CONN_MAX_AGE"] = age
        params["CONN_HEALTH_CHECKS"] = True

    def restore():
        for params, max_age, checks in saved:
            params["CONN_MAX_AGE"], params["CONN_HEALTH_CHECKS"] = max_age, checks

    return restore


class Outage:
    """Says once that the database is unavailable and once that it answers again, however many
    threads and retries run into it meanwhile; waits it out without starving systemd's watchdog."""

    def __init__(self, worker_id: str, stopping: threading.Event):
        self.worker_id = worker_id
        self.stopping = stopping
        self.ready = False  # READY=1 sent: waiting feeds the watchdog instead of extending the start
        self.since: float | None = None
        self.lock = threading.Lock()
        self.answering = threading.Event()
        self.answering.set()

    def wait_over(self) -> None:
        while not self.answering.wait(0.5) and not self.stopping.is_set():
            pass

    def began(self, exc: BaseException, what: str = "") -> None:
        with self.lock:
            first, self.since = self.since is None, self.since or time.monotonic()
            self.answering.clear()
        message = "worker %s: database unavailable (%s)%s; backing off and retrying until it answers"
        log.log(
            logging.ERROR if first else logging.DEBUG,
            message,
            self.worker_id,
            exc,
            f"; {what}" if what else "",
        )

    def over(self) -> None:
        with self.lock:
            since, self.since = self.since, None
            self.answering.set()
        if since is not None:
            log.warning(
                "worker %s: database answers again after %.1fs", self.worker_id, time.monotonic() - since
            )

    def wait_alive(self, seconds: float) -> None:
        """Wait out a database outage in short steps, telling systemd's watchdog the loop is alive (it
        is waiting, not stuck); before READY, asking for more time to start instead."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.ready:
                systemd.notify("WATCHDOG=1", "STATUS=waiting for the database")
            else:
                # the next try (a connect: DB_CONNECT_TIMEOUT) and this wait, with room to spare
                systemd.notify("EXTEND_TIMEOUT_USEC=60000000", "STATUS=waiting for the database to start")
            self.stopping.wait(min(1.0, deadline - time.monotonic()))

    def retry(self, fn, tries: int | None = None):
        """Call ``fn`` until the database answers (bounded by ``tries``, or until stopping)."""
        pause, attempt = retry.Pause(), 0
        while True:
            attempt += 1
            try:
                result = fn()
            except DB_ERRORS as exc:
                if tries is not None and attempt >= tries:
                    log.error("worker %s: giving up after %s tries: %s", self.worker_id, attempt, exc)
                    return None
                self.began(exc)
                connection.close()
                if tries is None:
                    self.wait_alive(pause.next())
                    if self.stopping.is_set():
                        return None
                else:
                    time.sleep(pause.next())
            else:
                self.over()
                return result
