"""Crash recovery, run beside the claim loop by every worker: jobs whose worker stopped heartbeating go
back to pending (counting the attempt), and worker rows that went silent are removed."""

import logging
from datetime import timedelta

from jobs import db, engine
from jobs.models import WorkerProcess

log = logging.getLogger("jobs.reaper")


class Reaper:
    def __init__(self, stale_after: float):
        self.stale_after = stale_after
        self.interval = max(0.25, stale_after / 4)

    def tick(self, worker=None) -> list[int]:
        reaped = engine.reap_stale(self.stale_after)
        cutoff = db.now() - timedelta(seconds=self.stale_after * 2)  # the database's clock
        gone, _ = WorkerProcess.objects.filter(heartbeat_at__lt=cutoff).delete()
        if gone:
            log.info("removed %s silent worker row(s)", gone)
        return reaped
