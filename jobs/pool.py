"""The worker's pool of handler threads: each takes the highest-priority unit waiting, runs it (see
jobs.execution), and records its failures (successes go to the completer). A handler past its timeout
is abandoned: its attempt is recorded as failed, a new thread takes its place, and the old one ends when
its handler returns (a worker with too many such threads exits: see Worker._loop)."""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING

from django.db import close_old_connections, connection

from jobs import engine, execution
from jobs.exceptions import JobTimeout
from jobs.registry import get_job_type
from jobs.units import Running, UnitState

if TYPE_CHECKING:
    from jobs.worker import Worker

log = logging.getLogger("jobs.worker")


class UnitQueue(queue.PriorityQueue):
    """The pool's queue of units, which also takes a claim's units at once: under one lock, with one
    notify for all of them (a put each was a lock and a notify per job in the claim loop's thread)."""

    def put_many(self, items: list) -> None:
        with self.not_empty:  # the queue's mutex; unbounded, so never waits for room
            for item in items:
                self._put(item)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))


class Pool:
    def __init__(self, worker: Worker):
        self.worker = worker  # its unit table and lock, counters, outage, completer
        # Units waiting for a thread, highest priority first, then in claim order: a job claimed
        # behind a prefetch buffer of lower-priority ones does not wait for them (behind 1,000,000
        # pending 2 ms jobs, a high-priority one waited p99 149 ms in FIFO order; see bench/README.md).
        self.waiting = UnitQueue()
        self._order = itertools.count()
        self.threads: list[threading.Thread] = []
        self.abandoned = 0  # threads still inside a handler that ran past its timeout
        self.executing = 0  # threads inside a handler (under the units' lock)

    def spawn(self) -> None:
        thread = threading.Thread(target=self._main, name=f"jobs-{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def submit_many(self, units: list[Running]) -> None:
        order = self._order
        self.waiting.put_many([(-running.job.priority, next(order), running) for running in units])

    def stop(self) -> None:
        """Each thread ends after the units still waiting (those are abandoned by then: not run)."""
        for _ in self.threads:
            self.waiting.put((math.inf, next(self._order), None))

    def check_timeouts(self) -> None:
        worker = self.worker
        now = time.monotonic()
        with worker.units.lock:
            late = [
                r
                for r in worker.units.inflight.values()
                if r.state == UnitState.EXECUTING and now > r.deadline and not r.abandoned.is_set()
            ]
        for running in late:
            running.abandoned.set()
            with worker.units.lock:
                worker.units.inflight.pop(running.key, None)
                self.abandoned += 1
            seconds = get_job_type(running.job.type).timeout
            for job in running.jobs:
                status = engine.fail(job, JobTimeout(f"handler ran longer than its timeout of {seconds:g}s"))
                log.warning("job %s %s: timed out after %.1fs (%s)", job.id, job.type, seconds, status)
                worker.stats.finished(job.type, "dead" if status == "dead" else "failed", seconds)
            self.spawn()

    def _main(self) -> None:
        worker = self.worker
        try:
            while True:
                _, _, running = self.waiting.get()
                if running is None:
                    return
                # Claimed before an outage, it may have been reclaimed during it: start it only after
                # the loop's first heartbeat since says whether it is still ours (drops it if not).
                worker.outage.wait_over()
                with worker.units.lock:
                    if running.abandoned.is_set() or worker.units.inflight.get(running.key) is not running:
                        continue  # handed back at shutdown before it started
                    try:
                        timeout = get_job_type(running.job.type).timeout
                    except BaseException:
                        timeout = 300.0  # unknown type: sent to the dead letters at once below
                    running.state = UnitState.EXECUTING
                    running.deadline = time.monotonic() + timeout
                    self.executing += 1
                close_old_connections()
                try:
                    outcomes = execution.run_group(
                        running.jobs,
                        cancel_event=running.cancel_event,
                        abandoned=running.abandoned,
                        defer_success=lambda job, result, duration, r=running: worker.completer.defer(
                            r, job, result, duration
                        ),
                    )
                    for job, outcome in outcomes:
                        if outcome.status != "completing":
                            status = "failed" if outcome.status == "pending" else outcome.status
                            worker.stats.finished(job.type, status, outcome.duration)
                    worker.durations.add(outcome.duration for _, outcome in outcomes)
                except BaseException:
                    # Recording the outcome failed even after retries: the job stays running and the
                    # reaper hands it back once its heartbeat stops. The thread lives on whatever was
                    # raised: a dead thread would hold its jobs and never be replaced.
                    log.exception("job %s: outcome could not be recorded", running.job.id)
                with worker.units.lock:
                    self.executing -= 1
                    running.state = UnitState.COMPLETING if running.pending else UnitState.DONE
                    if not running.pending:
                        worker.units.retire_locked(running)
                    # Wake the claim loop only when it has something to do: room below its low-water
                    # mark, or nothing held (burst and --max-jobs end). Woken after every job, its pass
                    # walked the whole unit table twice (timeouts, room): with 200 jobs prefetched,
                    # most of a no-op job's cost on the loop's thread.
                    room = self.waiting.qsize() + self.executing < worker.low_water
                    if room or not worker.units.inflight or running.abandoned.is_set():
                        worker.wakeup.set()
                if running.abandoned.is_set():
                    with worker.units.lock:
                        self.abandoned -= 1
                    return  # a replacement thread took this one's place
        finally:
            connection.close()
