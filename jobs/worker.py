"""The worker loop: claim up to free capacity, run jobs on a pool of threads, heartbeat, stop gracefully.

The main thread owns claiming, heartbeats, timeouts and the plugins (reaper, scheduler, alerts); handler
threads only run jobs and record their outcomes. Each thread has its own database connection. The
parts: the unit table (jobs.units), the pool of handler threads (jobs.pool), the batched completer
(jobs.completer), the heartbeat and the worker's row (jobs.presence), outages and connections
(jobs.outage), LISTEN (jobs.listener) and prefetch sizing (jobs.prefetch).
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

from django.db import connection

from jobs import conf, db, engine, execution, retry, systemd, worker_counters
from jobs import prefetch as prefetch_module
from jobs.alerts import Alerts
from jobs.completer import Completer
from jobs.listener import Listener
from jobs.models import Job
from jobs.outage import DB_ERRORS, Outage, keep_connections
from jobs.pool import Pool
from jobs.presence import Presence
from jobs.reaper import Reaper
from jobs.scheduler import Scheduler
from jobs.units import Running, Units

log = logging.getLogger("jobs.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Plugin(Protocol):
    """Work the claim loop does beside claiming, every ``interval`` seconds, in the loop's thread (so a
    stuck plugin stops the watchdog's pings): the reaper, the scheduler and the alerts. ``tick`` raising a
    database error counts as the loop's."""

    interval: float

    def tick(self, worker: "Worker") -> object: ...


class Pass(enum.Enum):
    """What one pass of the claim loop found."""

    BUSY = "busy"  # claimed as much as it could: go round again at once
    IDLE = "idle"  # nothing more to claim now: wait for a wakeup or the poll interval
    DONE = "done"  # --burst or --max-jobs is satisfied: exit


class Worker:
    """Composes the claim loop, a pool of handler threads, a batched completer, the heartbeat, and the
    plugins (reaper, scheduler, alerts) that run beside the loop."""

    # While the buffer is full, a NOTIFY (something was enqueued) makes the loop claim the jobs that
    # outrank the buffer's lowest priority at once, at most this often, instead of at the next refill.
    PEEK_INTERVAL = 0.02
    WATCHDOG_INTERVAL = 1.0  # seconds between watchdog pings (systemd's WatchdogSec is far longer)
    TIMEOUT_CHECK_INTERVAL = 0.1  # seconds between walks of the unit table for handlers past their timeout

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
        stale_after = stale_after if stale_after is not None else conf.get("JOBS_STALE_AFTER")
        self.id = worker_id or default_worker_id()
        self.plugins: list[Plugin] = (
            plugins if plugins is not None else [Reaper(stale_after), Scheduler(), Alerts()]
        )
        self._next_plugin: dict[int, float] = {}
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.notified = threading.Event()  # a NOTIFY for our queues since the last peek
        self._next_peek = 0.0
        self._next_watchdog = 0.0
        self._next_timeout_check = 0.0
        self.claimed_total = 0
        self.low_water = self.concurrency  # claim again once fewer units are queued or running
        self.units = Units()
        self.stats = worker_counters.Recorder()
        self.outage = Outage(self.id, self.stopping)
        self.presence = Presence(self, min(conf.get("JOBS_HEARTBEAT_INTERVAL"), stale_after / 4))
        self.pool = Pool(self)
        self.completer = Completer(self)
        self._signals = 0

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully; a second one exits at once.

        A Python signal handler runs in the main thread between two of its bytecodes, possibly while
        that thread holds a lock the handler would take: the lock inside ``wakeup.wait()`` (an Event's
        set takes it too) or a logging handler's. So the handler only writes the signal's number to a
        pipe; a thread of its own logs it and stops the loop. (Setting the Event from the handler left a
        worker deadlocked after SIGTERM, once in a few thousand signals, with the log line written.)"""
        read_fd, self._signal_pipe = os.pipe()
        os.set_blocking(self._signal_pipe, False)
        threading.Thread(target=self._relay_signals, args=(read_fd,), daemon=True).start()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, f"worker {self.id}: second signal, exiting at once\n".encode())
            os._exit(1)
        try:
            os.write(self._signal_pipe, bytes([signum]))
        except BlockingIOError:  # the pipe is full of signals not relayed yet: this one changes nothing
            pass

    def _relay_signals(self, read_fd: int) -> None:
        while data := os.read(read_fd, 1):
            log.info("worker %s: %s received, stopping", self.id, signal.Signals(data[0]).name)
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
        restore = keep_connections()
        try:
            return self._run()
        finally:
            restore()

    def _run(self) -> int:
        # READY only once the worker can work: registered, so the database answers. Until then systemd
        # hears that it is waiting (STATUS, EXTEND_TIMEOUT_USEC), not that it is stuck.
        self.outage.retry(self.presence.register)
        if self.stopping.is_set():
            log.info("worker %s stopped before the database answered", self.id)
            return 0
        for _ in range(self.concurrency):
            self.pool.spawn()
        self.completer.start()
        if db.is_postgres() and conf.get("JOBS_LISTEN_NOTIFY"):
            Listener(self.id, self.queues, self.stopping, self.notified, self.wakeup).start()
        systemd.notify("READY=1", f"STATUS=worker {self.id} ready")
        self.outage.ready = True
        exit_code = 0
        try:
            exit_code = self._loop()
        finally:
            self._stop()
        log.info("worker %s stopped: %s jobs run", self.id, self.units.done_total)
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
                self.presence.next_at = 0.0  # the first pass once it answers learns what is still ours
                connection.close()
                self.outage.wait_alive(pause.next())
                continue
            # From the loop itself, so that systemd restarts a worker whose loop is stuck; once a second,
            # not on every pass (hundreds a second under load, each walking the unit table for STATUS).
            now = time.monotonic()
            if now >= self._next_watchdog:
                self._next_watchdog = now + self.WATCHDOG_INTERVAL
                systemd.notify("WATCHDOG=1", f"STATUS={self.units.executing()} job(s) running")
            if self.pool.abandoned > 2 * self.concurrency + 2:
                # Handlers that ignore their timeout pile up threads; a fresh process is the cure.
                log.error(
                    "worker %s: %s handlers stuck past their timeout; exiting", self.id, self.pool.abandoned
                )
                return 1
            if found == Pass.DONE:
                return 0
            if found == Pass.IDLE:
                self.wakeup.wait(self._wait_time())
                self.wakeup.clear()
        return 0

    def _iteration(self) -> Pass:
        """One pass of the loop: heartbeat and plugins when due, timeouts, then claim what there is room
        for."""
        now = time.monotonic()
        self.presence.beat_if_due(now)
        for index, plugin in enumerate(self.plugins):
            if now >= self._next_plugin.get(index, 0.0):
                plugin.tick(self)
                self._next_plugin[index] = now + plugin.interval
        if now >= self._next_timeout_check:
            self._next_timeout_check = now + self.TIMEOUT_CHECK_INTERVAL
            self.pool.check_timeouts()
        busy, held = self.units.claimable()
        # Claim when a thread is (about to be) free, enough to fill the threads and the prefetch buffer;
        # a buffer grown for short jobs is refilled once half of what it adds is used up.
        prefetch = self._prefetch()
        low_water = self.low_water = self.concurrency + (prefetch - self.prefetch) // 2
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
            self._start(execution.group_batches(claimed, top_up))
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
        return self.units.lowest_queued_priority()

    def _prefetch(self) -> int:
        """Jobs to hold claimed beyond the running ones: ``--prefetch`` when given, else sized by the
        recent handler durations (see jobs.prefetch)."""
        if not self.adaptive_prefetch:
            return self.prefetch
        return prefetch_module.size(self.concurrency, self.prefetch, self.durations.mean())

    def _wait_time(self) -> float:
        return max(0.0, min(self.poll_interval, self.presence.next_at - time.monotonic()))

    def _start(self, groups: list[list[Job]]) -> None:
        """Hand a claim's units to the pool: the unit table and the counters taken once for all."""
        units = [Running(jobs=jobs) for jobs in groups]
        self.units.add_all(units)
        jobs = [job for running in units for job in running.jobs]
        self.claimed_total += len(jobs)
        self.stats.started_many(job.type for job in jobs)
        self.pool.submit_many(units)

    def _stop(self) -> None:
        """Hand back what has not started, give running handlers the grace period, record what they
        finished, hand back the rest, and leave."""
        systemd.notify("STOPPING=1", f"STATUS=stopping, {self.units.executing()} job(s) running")
        self.units.abandon_queued()
        deadline = time.monotonic() + self.grace_period
        while time.monotonic() < deadline and not self.units.only_queued_left():
            self.wakeup.wait(0.05)
            self.wakeup.clear()
            try:
                self.presence.beat_if_due(time.monotonic())
                self.pool.check_timeouts()
            except DB_ERRORS as exc:
                log.error("worker %s: database unavailable while stopping (%s)", self.id, exc)
        self.completer.stop(max(5.0, deadline - time.monotonic()))
        left = self.units.abandon_all()
        if left:
            released = self.outage.retry(lambda: engine.release(left, "handed back at shutdown"), tries=5)
            log.warning("worker %s: %s claimed job(s) handed back to pending", self.id, released)
        self.pool.stop()
        self.outage.retry(self.stats.flush, tries=3)
        self.outage.retry(self.presence.deregister, tries=3)
        connection.close()
