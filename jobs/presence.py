"""The worker's presence: its row in ``WorkerProcess`` and the heartbeat that keeps its jobs its own.

Each beat refreshes the running jobs' heartbeats under their lock tokens (see jobs.engine.heartbeat)
and learns which ones are no longer this worker's: reclaimed while it was silent (cut off, frozen),
or cancelled by staff. A unit not started yet is dropped from the buffer; a running handler is told
to stop (``ctx.cancelled``): its outcome would be fenced off anyway."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from jobs import db, engine, worker_counters
from jobs.models import Job, WorkerProcess
from jobs.units import Running, Units, UnitState

if TYPE_CHECKING:
    from jobs.worker import Worker

log = logging.getLogger("jobs.worker")


class Presence:
    def __init__(self, worker: Worker, interval: float):
        self.worker = worker  # its id, queues and concurrency, as registered
        self.interval = interval
        self.next_at = 0.0  # monotonic time of the next beat; 0 beats at the loop's next pass

    @property
    def units(self) -> Units:
        return self.worker.units

    @property
    def stats(self) -> worker_counters.Recorder:
        return self.worker.stats

    @property
    def wakeup(self) -> threading.Event:
        return self.worker.wakeup

    def beat_if_due(self, now: float) -> None:
        if now >= self.next_at:
            self.beat()
            self.next_at = now + self.interval

    def beat(self) -> None:
        worker, units = self.worker, self.units
        jobs = units.held_jobs()
        held, cancelled = engine.heartbeat(jobs)
        lost = {job.id for job in jobs} - held
        with units.lock:
            for running in list(units.inflight.values()):
                if any(job.id in cancelled for job in running.jobs):
                    running.cancel_event.set()
                gone = [job for job in running.jobs if job.id in lost]
                if gone:
                    self._lost_locked(running, gone)
        rows = WorkerProcess.objects.filter(id=worker.id).update(
            heartbeat_at=db.now_value(), current_jobs=[j.id for j in jobs], jobs_done=units.done_total
        )
        if not rows:
            # Silent for long enough (cut off, frozen) that a reaper removed our row: we are back.
            self.register()
            log.warning("worker %s: its row was removed while it was silent; registered again", worker.id)
        self.stats.flush()

    def _lost_locked(self, running: Running, gone: list[Job]) -> None:
        """These jobs of ``running`` were reclaimed while this worker was silent."""
        if running.state == UnitState.QUEUED:
            running.jobs = [job for job in running.jobs if job not in gone]
            if not running.jobs:
                running.abandoned.set()
                if self.units.inflight.get(running.key) is running:
                    del self.units.inflight[running.key]
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

    def register(self) -> None:
        worker = self.worker
        WorkerProcess.objects.update_or_create(
            id=worker.id,
            defaults=dict(
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=worker.queues or [],
                concurrency=worker.concurrency,
                started_at=db.now_value(),
                heartbeat_at=db.now_value(),
                state="running",
            ),
        )

    def deregister(self) -> None:
        WorkerProcess.objects.filter(id=self.worker.id).delete()
