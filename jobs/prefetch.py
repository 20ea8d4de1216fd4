"""How many jobs a worker holds claimed beyond its running ones: a pure function of what recent jobs
took, and the running mean it reads.

A worker claims when a thread is (about to be) free. With short jobs one claim statement should feed
many of them, so the buffer grows to about ``window`` seconds of work for all threads; with long jobs
it stays at the threads' number, so that a buffered job waits some tens of milliseconds at most behind
the running ones. The mean is trusted only after several samples and forgotten after an idle spell: a
few 1 ms cron ticks said nothing about the two-second jobs that came next.
"""

import threading
import time
from collections.abc import Callable, Iterable

WINDOW = 0.05  # seconds of work for all threads held ahead
CAP = 200  # jobs, whatever the mean
MIN_SAMPLES = 8
MEMORY = 2.0  # seconds without a finished job after which the mean is forgotten


def size(concurrency: int, floor: int, mean: float | None, *, window: float = WINDOW, cap: int = CAP) -> int:
    """Jobs to hold beyond the running ones: ``floor`` (the configured or the threads' number) until a
    trusted ``mean`` handler duration says jobs are short, then about ``window`` seconds of work for
    ``concurrency`` threads, at most ``cap`` (never below ``floor``)."""
    if mean is None:
        return floor
    ahead = int(concurrency * window / max(mean, 1e-6))
    return max(floor, min(cap, ahead))


class RecentDurations:
    """A moving average of handler durations (each new one weighs a fifth), given as ``mean()`` only
    once ``min_samples`` were seen since it was last forgotten, and forgotten ``memory`` seconds after
    the latest. Thread-safe: handler threads add, the claim loop reads."""

    def __init__(
        self,
        *,
        min_samples: int = MIN_SAMPLES,
        memory: float = MEMORY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.min_samples, self.memory, self.clock = min_samples, memory, clock
        self._lock = threading.Lock()
        self._mean: float | None = None
        self._samples = 0
        self._latest = 0.0

    def add(self, durations: Iterable[float]) -> None:
        durations = list(durations)
        if not durations:
            return
        now = self.clock()
        with self._lock:
            if now - self._latest > self.memory:
                self._mean, self._samples = None, 0
            for duration in durations:
                self._mean = duration if self._mean is None else 0.8 * self._mean + 0.2 * duration
                self._samples += 1
            self._latest = now

    def mean(self) -> float | None:
        with self._lock:
            if self._samples < self.min_samples or self.clock() - self._latest > self.memory:
                return None
            return self._mean
