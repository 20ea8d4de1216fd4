"""The worker loop: claim up to free capacity, run jobs on a pool of threads, heartbeat, stop gracefully.

The main thread owns claiming, heartbeats, timeouts and the plugins (reaper, scheduler); handler
threads only run jobs and record their outcomes. Each thread has its own database connection.
"""

import enum
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Protocol

from django.db import (
    InterfaceError,
    OperationalError,
    connection,
    connections,
)

from jobs import conf, db, engine, execution, retry, systemd, worker_counters
from jobs import prefetch as prefetch_module
from jobs.completer import Completer
from jobs.models import Job, WorkerProcess
from jobs.pool import Pool
from jobs.reaper import Reaper
from jobs.scheduler import Scheduler
from jobs.units import Running, UnitState

log = logging.getLogger("jobs.worker")

DB_ERRORS = (OperationalError, InterfaceError)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Plugin(Protocol):
    """Work the claim loop does beside claiming, every ``interval`` seconds, in the loop's thread (so a
    stuck plugin stops the watchdog's pings): the reaper and the scheduler. ``tick`` raising a database
    error counts as the loop's."""

    interval: float

    def tick(self, worker: "Worker") -> object: ...


class Pass(enum.Enum):
    """What one pass of the claim loop found."""

    BUSY = "busy"  # claimed as much as it could: go round again at once
    IDLE = "idle"  # nothing more to claim now: wait for a wakeup or the poll interval
    DONE = "done"  # --burst or --max-jobs is satisfied: exit


class Outage:
    """Says once that the database is unavailable and once that it answers again, however many
    threads and retries run into it meanwhile."""

    def __init__(self, worker_id: str):
        self.worker_id = worker_id
        self.since: float | None = None
        self.lock = threading.Lock()
        self.answering = threading.Event()
        self.answering.set()

    def wait_over(self, stopping: threading.Event) -> None:
        while not self.answering.wait(0.5) and not stopping.is_set():
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


class Worker:
    """Composes the claim loop, a pool of handler threads, a batched completer, and the plugins
    (reaper, scheduler) that run beside the loop."""

    # While the buffer is full, a NOTIFY (something was enqueued) makes the loop claim the jobs that
    # outrank the buffer's lowest priority at once, at most this often, instead of at the next refill.
    PEEK_INTERVAL = 0.02

    def __init__(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int = 1,
        prefetch: int | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        poll_interval: float | None = None,
        grace_period: float | None = None,
        worker_id: str | None = None,
        stale_after: float | None = None,
        plugins: list[Plugin] | None = None,
    ):

        self.queues = queues or None
        self.concurrency = max(1, concurrency)
        if prefetch is None:
            prefetch = conf.get("JOBS_PREFETCH")
        self.adaptive_prefetch = prefetch is None
        self.prefetch = self.concurrency if prefetch is None else max(0, prefetch)
        self.durations = prefetch_module.RecentDurations()  # sizes the adaptive prefetch
        self.burst = burst
        self.max_jobs = max_jobs
        self.poll_interval = poll_interval if poll_interval is not None else conf.get("JOBS_POLL_INTERVAL")
        self.grace_period = grace_period if grace_period is not None else conf.get("JOBS_GRACE_PERIOD")
        self.stale_after = stale_after if stale_after is not None else conf.get("JOBS_STALE_AFTER")
        self.heartbeat_interval = min(conf.get("JOBS_HEARTBEAT_INTERVAL"), self.stale_after / 4)
        self.id = worker_id or default_worker_id()
        self.plugins: list[Plugin] = (
            plugins if plugins is not None else [Reaper(self.stale_after), Scheduler()]
        )
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.notified = threading.Event()  # a NOTIFY for our queues since the last peek
        self._next_peek = 0.0
        self.lock = threading.Lock()
        self.inflight: dict[int, Running] = {}
        self.claimed_total = 0
        self.done_total = 0
        self.stats = worker_counters.Recorder()
        self.pool = Pool(self)
        self.completer = Completer(self)
        self._signals = 0
        self.ready = False  # READY=1 sent
        self.outage = Outage(self.id)
        self._next_heartbeat = 0.0
        self._next_plugin: dict[int, float] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("worker %s: second signal, exiting at once", self.id)
            os._exit(1)
        log.info("worker %s: %s received, stopping", self.id, signal.Signals(signum).name)
        self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def run(self) -> int:
        log.info(
            "worker %s started: queues=%s concurrency=%s prefetch=%s",
            self.id,
            ",".join(self.queues or ["*"]),
            self.concurrency,
            self.prefetch,
        )
        restore = self._keep_connections()
        try:
            return self._run()
        finally:
            restore()

    def _keep_connections(self):
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

    def _run(self) -> int:
        # READY only once the worker can work: registered, so the database answers. Until then systemd
        # hears that it is waiting (STATUS, EXTEND_TIMEOUT_USEC), not that it is stuck.
        self._with_db_retry(self._register)
        if self.stopping.is_set():
            log.info("worker %s stopped before the database answered", self.id)
            return 0
        for _ in range(self.concurrency):
            self.pool.spawn()
        self.completer.start()
        if db.is_postgres() and conf.get("JOBS_LISTEN_NOTIFY"):
            threading.Thread(target=self._listen, name="jobs-listen", daemon=True).start()
        systemd.notify("READY=1", f"STATUS=worker {self.id} ready")
        self.ready = True
        exit_code = 0
        try:
            exit_code = self._loop()
        finally:
            self._stop()
        log.info("worker %s stopped: %s jobs run", self.id, self.done_total)
        return exit_code

    def _loop(self) -> int:
        pause = retry.Pause()
        while not self.stopping.is_set():
            try:
                found = self._iteration()
                pause.reset()
                self.outage.over()
            except DB_ERRORS as exc:
                self.outage.began(exc)
                self._next_heartbeat = 0.0  # the first pass once it answers learns what is still ours
                connection.close()
                self._wait_alive(pause.next())
                continue
            # From the loop itself, so that systemd restarts a worker whose loop is stuck.
            systemd.notify("WATCHDOG=1", f"STATUS={self._executing()} job(s) running")
            if self.pool.abandoned > 2 * self.concurrency + 2:
                # Handlers that ignore their timeout pile up threads; a fresh process is the cure.
                log.error(
                    "worker %s: %s handlers stuck past their timeout; exiting",
                    self.id,
                    self.pool.abandoned,
                )
                return 1
            if found == Pass.DONE:
                return 0
            if found == Pass.IDLE:
                self.wakeup.wait(self._wait_time())
                self.wakeup.clear()
        return 0

    def _wait_alive(self, seconds: float) -> None:
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

    def has_executing_units(self) -> bool:
        """Whether a handler runs (the lock is held)."""
        return any(r.state == UnitState.EXECUTING for r in self.inflight.values())

    def unit_completed(self, running: Running) -> None:
        """The completer recorded the last success of ``running`` (the lock is held): once its handler
        has returned too, the unit is done."""
        if running.state == UnitState.COMPLETING:
            self.retire(running)

    def retire(self, running: Running) -> None:
        if self.inflight.get(running.key) is running:
            del self.inflight[running.key]
            self.done_total += len(running.jobs)

    def _executing(self) -> int:
        with self.lock:
            return sum(1 for r in self.inflight.values() if r.state == UnitState.EXECUTING)

    def _claimable(self) -> tuple[int, int]:
        """(units queued or executing, units held in all, flushing included)."""
        with self.lock:
            busy = sum(
                1 for r in self.inflight.values() if r.state in (UnitState.QUEUED, UnitState.EXECUTING)
            )
            return busy, len(self.inflight)

    def _iteration(self) -> Pass:
        """One pass of the loop: heartbeat and plugins when due, timeouts, then claim what there is room
        for."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.heartbeat_interval
        for index, plugin in enumerate(self.plugins):
            if now >= self._next_plugin.get(index, 0.0):
                plugin.tick(self)
                self._next_plugin[index] = now + plugin.interval
        self.pool.check_timeouts()
        busy, held = self._claimable()
        # Claim when a thread is (about to be) free, enough to fill the threads and the prefetch buffer;
        # a buffer grown for short jobs is refilled once half of what it adds is used up.
        prefetch = self._prefetch()
        low_water = self.concurrency + (prefetch - self.prefetch) // 2
        free = self.concurrency + prefetch - busy if busy < low_water else 0
        above = self._outranked() if free <= 0 else None
        if above is not None:
            free = self.concurrency
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.claimed_total)
        claimed = []
        if free > 0:
            if above is None:
                self.notified.clear()  # this claim takes whatever the NOTIFY was about
            claimed = engine.claim(self.id, free, self.queues, above_priority=above)
            top_up = lambda job_type, n: engine.claim(  # noqa: E731
                self.id, n, self.queues, types=[job_type], above_priority=above
            )
            for group in execution.group_batches(claimed, top_up):
                self._start(group)
        if not claimed and not held:
            if self.max_jobs is not None and self.claimed_total >= self.max_jobs:
                return Pass.DONE
            # Burst ends when nothing is due: a job held back by a rate limit or a concurrency key
            # is due, so burst waits for it.
            if self.burst and not engine.has_due(self.queues):
                return Pass.DONE
        return Pass.IDLE if not claimed or len(claimed) < free else Pass.BUSY

    def _outranked(self) -> int | None:
        """With the buffer full and a NOTIFY heard: the lowest priority waiting in the buffer, so that
        the loop claims what outranks it now (threads take it first) instead of at the next refill,
        when half the buffer has run. Behind 1,000,000 pending 2 ms jobs a high-priority job waited
        p99 56-152 ms for that refill; see bench/README.md. None when there is nothing to peek for."""
        now = time.monotonic()
        if not self.notified.is_set() or now < self._next_peek:
            return None
        self.notified.clear()
        self._next_peek = now + self.PEEK_INTERVAL
        with self.lock:
            waiting = [r.job.priority for r in self.inflight.values() if r.state == "queued"]
        return min(waiting) if waiting else None

    def _prefetch(self) -> int:
        """Jobs to hold claimed beyond the running ones: ``--prefetch`` when given, else sized by the
        recent handler durations (see jobs.prefetch)."""
        if not self.adaptive_prefetch:
            return self.prefetch
        return prefetch_module.size(self.concurrency, self.prefetch, self.durations.mean())

    def _wait_time(self) -> float:
        return max(0.0, min(self.poll_interval, self._next_heartbeat - time.monotonic()))

    def _stop(self) -> None:
        systemd.notify("STOPPING=1", f"STATUS=stopping, {self._executing()} job(s) running")
        with self.lock:
            queued = [r for r in self.inflight.values() if r.state == UnitState.QUEUED]
            for running in queued:
                running.abandoned.set()  # claimed but not started: handed back below, never run
        deadline = time.monotonic() + self.grace_period
        while time.monotonic() < deadline:
            with self.lock:
                if all(r.state == UnitState.QUEUED for r in self.inflight.values()):
                    break
            self.wakeup.wait(0.05)
            self.wakeup.clear()
            try:
                if time.monotonic() >= self._next_heartbeat:
                    self._heartbeat()
                    self._next_heartbeat = time.monotonic() + self.heartbeat_interval
                self.pool.check_timeouts()
            except DB_ERRORS as exc:
                log.error("worker %s: database unavailable while stopping (%s)", self.id, exc)
        self.completer.stop(max(5.0, deadline - time.monotonic()))
        with self.lock:
            left = [job for r in self.inflight.values() for job in r.jobs]
            for running in self.inflight.values():
                running.abandoned.set()
        if left:
            released = self._with_db_retry(lambda: engine.release(left, "handed back at shutdown"), tries=5)
            log.warning("worker %s: %s claimed job(s) handed back to pending", self.id, released)
        self.pool.stop()
        self._with_db_retry(self.stats.flush, tries=3)
        self._with_db_retry(lambda: WorkerProcess.objects.filter(id=self.id).delete(), tries=3)
        connection.close()

    # -- running jobs -----------------------------------------------------------------------------

    def _start(self, jobs: list[Job]) -> None:
        running = Running(jobs=jobs)
        with self.lock:
            self.inflight[running.key] = running
        self.claimed_total += len(jobs)
        for job in jobs:
            self.stats.started(job.type)
        self.pool.submit(running)

    # -- timeouts and heartbeats ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        with self.lock:
            jobs = [job for r in self.inflight.values() if not r.abandoned.is_set() for job in r.jobs]
        held, cancelled = engine.heartbeat(jobs)
        lost = {job.id for job in jobs} - held
        with self.lock:
            for running in list(self.inflight.values()):
                if any(job.id in cancelled for job in running.jobs):
                    running.cancel_event.set()
                gone = [job for job in running.jobs if job.id in lost]
                if gone:
                    self._lost(running, gone)
        rows = WorkerProcess.objects.filter(id=self.id).update(
            heartbeat_at=db.now_value(), current_jobs=[j.id for j in jobs], jobs_done=self.done_total
        )
        if not rows:
            # Silent for long enough (cut off, frozen) that a reaper removed our row: we are back.
            self._register()
            log.warning("worker %s: its row was removed while it was silent; registered again", self.id)
        self.stats.flush()

    def _lost(self, running: Running, gone: list[Job]) -> None:
        """These jobs of ``running`` were reclaimed while this worker was silent (the lock is held). One
        not started yet is dropped from the buffer, never run; a running handler is told to stop
        (``ctx.cancelled``), as for a staff cancel: its outcome would be fenced off anyway."""
        if running.state == UnitState.QUEUED:
            running.jobs = [job for job in running.jobs if job not in gone]
            if not running.jobs:
                running.abandoned.set()
                if self.inflight.get(running.key) is running:
                    del self.inflight[running.key]
            for job in gone:
                self.stats.finished(job.type, "lost", 0.0)
                log.warning(
                    "job %s %s: reclaimed by another worker; dropped before it started", job.id, job.type
                )
            self.wakeup.set()  # room to claim
        elif running.state == UnitState.EXECUTING:
            running.cancel_event.set()
            for job in gone:
                if job.id not in running.lost:
                    running.lost.add(job.id)
                    log.warning(
                        "job %s %s: reclaimed by another worker; its handler is told to stop",
                        job.id,
                        job.type,
                    )

    def _register(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        WorkerProcess.objects.update_or_create(
            id=self.id,
            defaults=dict(
                hostname=host,
                pid=pid,
                queues=self.queues or [],
                concurrency=self.concurrency,
                started_at=db.now_value(),
                heartbeat_at=db.now_value(),
                state="running",
            ),
        )

    def _with_db_retry(self, fn, tries: int | None = None):
        """Call ``fn`` until the database answers (bounded by ``tries``, or until stopping)."""
        pause, attempt = retry.Pause(), 0
        while True:
            attempt += 1
            try:
                result = fn()
            except DB_ERRORS as exc:
                if tries is not None and attempt >= tries:
                    log.error("worker %s: giving up after %s tries: %s", self.id, attempt, exc)
                    return None
                self.outage.began(exc)
                connection.close()
                if tries is None:
                    self._wait_alive(pause.next())
                    if self.stopping.is_set():
                        return None
                else:
                    time.sleep(pause.next())
            else:
                self.outage.over()
                return result

    # -- LISTEN/NOTIFY ----------------------------------------------------------------------------

    def _listen(self) -> None:
        pause, lost = retry.Pause(), False
        errors = db.listen_errors()

        def listening() -> None:
            nonlocal lost
            pause.reset()
            lost = False
            self.notified.set()  # anything enqueued while we were not listening
            self.wakeup.set()

        def notified(queue: str) -> None:
            if self.queues is None or queue in self.queues:
                self.notified.set()
                self.wakeup.set()

        while not self.stopping.is_set():
            try:
                db.listen(self.stopping, notified, listening)
            except errors as exc:
                if not lost:  # once per loss, not once per reconnect attempt
                    log.warning(
                        "worker %s: LISTEN connection lost (%s); polling until it is back", self.id, exc
                    )
                lost = True
                self.stopping.wait(pause.next())
