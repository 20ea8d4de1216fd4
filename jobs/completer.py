"""The worker's batched completer: handlers' successes are recorded together, one statement and one
commit per flush (every FLUSH_INTERVAL seconds, or at once when FLUSH_SIZE wait), in a thread of its
own. Failures are recorded by the handler's thread at once (see jobs.execution)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from django.db import connection

from jobs import engine, execution, retry
from jobs.models import Job
from jobs.outage import DB_ERRORS
from jobs.units import Running

if TYPE_CHECKING:
    from jobs.worker import Worker


class Completer:
    FLUSH_INTERVAL = 0.05  # seconds a success may wait to be recorded with others
    FLUSH_SIZE = 100

    def __init__(self, worker: Worker):
        self.worker = worker  # its units, their lock, its counters and its outage
        self.waiting: list[tuple[Running, Job, object, float]] = []
        self.flush_now = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name="jobs-completer", daemon=True)
        self.thread.start()

    def stop(self, timeout: float) -> None:
        """Flush what waits and end once no handler is running any more (or after ``timeout``)."""
        self.stopping.set()
        self.flush_now.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def defer(self, running: Running, job: Job, result, duration: float) -> None:
        """A handler's success, to be recorded with others (called from the handler's thread)."""
        with self.worker.units.lock:
            running.pending += 1
            self.waiting.append((running, job, result, duration))
            if len(self.waiting) >= self.FLUSH_SIZE:
                self.flush_now.set()

    def _main(self) -> None:
        worker = self.worker
        try:
            while True:
                self.flush_now.wait(self.FLUSH_INTERVAL)
                self.flush_now.clear()
                stopping = self.stopping.is_set()
                with worker.units.lock:
                    batch, self.waiting = self.waiting, []
                if batch:
                    self._flush(batch)
                if stopping:
                    with worker.units.lock:
                        if not self.waiting and not worker.units.executing_locked():
                            return
        finally:
            connection.close()

    def _flush(self, batch: list[tuple[Running, Job, object, float]]) -> None:
        worker = self.worker
        pause = retry.Pause()
        while True:
            try:
                done = engine.complete_many([(job, result) for _, job, result, _ in batch])
                break
            except DB_ERRORS as exc:
                worker.outage.began(exc, f"could not record {len(batch)} result(s)")
                connection.close()
                if worker.stopping.is_set() and pause.waited > 10:
                    return  # left running: the reaper hands them back, and they run again
                time.sleep(pause.next())
        outcomes = []
        for _, job, _, duration in batch:
            status = "succeeded" if job.id in done else "lost"  # engine.complete logged the loss
            execution.log_outcome(job, status, duration)
            outcomes.append((job.type, status, duration))
        worker.stats.finished_many(outcomes)
        with worker.units.lock:  # once for the batch, not once per job
            for running, *_ in batch:
                running.pending -= 1
                if running.pending == 0:
                    worker.units.completed_locked(running)
        worker.wakeup.set()
