"""Job counters and run-time histograms, aggregated in each worker and added to the JobStat table in
one statement per flush (the worker flushes with its heartbeat). A SIGKILLed worker loses at most one
flush interval of counts; the job rows themselves are never affected."""

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable

from jobs import db

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


_LABELS = [f"{bound:g}" for bound in BUCKETS] + ["+Inf"]


def bucket_label(seconds: float) -> str:
    return _LABELS[bisect.bisect_left(BUCKETS, seconds)]


class Recorder:
    """Thread-safe in-memory counters: ``started(type)``, ``finished(type, outcome, seconds)``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], list] = defaultdict(lambda: [0, 0.0])

    def started(self, job_type: str) -> None:
        self.started_many([job_type])

    def started_many(self, job_types: Iterable[str]) -> None:
        """One start for each type named (a claim's jobs: one lock for all of them)."""
        with self._lock:
            for job_type in job_types:
                self._counts[(job_type, "started", "")][0] += 1

    def finished(self, job_type: str, outcome: str, seconds: float) -> None:
        self.finished_many([(job_type, outcome, seconds)])

    def finished_many(self, outcomes: Iterable[tuple[str, str, float]]) -> None:
        """``(type, outcome, seconds)`` for several jobs (a completer's flush), under one lock."""
        with self._lock:
            for job_type, outcome, seconds in outcomes:
                entry = self._counts[(job_type, outcome, bucket_label(seconds))]
                entry[0] += 1
                entry[1] += seconds

    def flush(self) -> int:
        """Add the counts to the database and forget them; on a database error they are kept."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(lambda: [0, 0.0])
        if not counts:
            return 0
        try:
            db.add_job_stats(counts)
        except Exception:
            with self._lock:
                for key, (n, s) in counts.items():
                    self._counts[key][0] += n
                    self._counts[key][1] += s
            raise
        return len(counts)
