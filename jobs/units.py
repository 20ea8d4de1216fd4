"""A worker's units of work: a job, or a batch of jobs of one type, claimed together, and the states
they go through. Shared by the claim loop (jobs.worker), the thread pool (jobs.pool) and the
completer (jobs.completer)."""

import enum
import threading
from dataclasses import dataclass, field

from jobs.flag import Flag
from jobs.models import Job


class UnitState(enum.StrEnum):
    QUEUED = "queued"  # claimed, waiting for a thread
    EXECUTING = "executing"  # its handler runs
    COMPLETING = "completing"  # returned; its successes wait for the batched flush
    DONE = "done"


@dataclass
class Running:
    """One unit of work: a job, or a batch of jobs of one type, going through the UnitStates."""

    jobs: list[Job]
    state: UnitState = UnitState.QUEUED
    deadline: float = float("inf")
    cancel_event: Flag = field(default_factory=Flag)
    abandoned: Flag = field(default_factory=Flag)
    pending: int = 0  # successes of this unit still waiting to be flushed
    lost: set[int] = field(default_factory=set)  # jobs found reclaimed by another worker (logged once)
    key: int = 0  # the unit's key in Units.inflight: its first job's id, kept if that job is dropped

    def __post_init__(self):
        self.key = self.jobs[0].id

    @property
    def job(self) -> Job:
        return self.jobs[0]


class Units:
    """The worker's table of units, by key, under one lock shared by the claim loop, the pool's
    threads and the completer. Methods named ``*_locked`` expect the caller to hold ``lock``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.inflight: dict[int, Running] = {}
        self.done_total = 0  # jobs whose unit was retired

    def add(self, running: Running) -> None:
        self.add_all([running])

    def add_all(self, units: list[Running]) -> None:
        with self.lock:
            for running in units:
                self.inflight[running.key] = running

    def retire_locked(self, running: Running) -> None:
        if self.inflight.get(running.key) is running:
            del self.inflight[running.key]
            self.done_total += len(running.jobs)

    def completed_locked(self, running: Running) -> None:
        """The completer recorded the last success of ``running``: once its handler has returned too,
        the unit is done."""
        if running.state == UnitState.COMPLETING:
            self.retire_locked(running)

    def executing_locked(self) -> int:
        return sum(1 for r in self.inflight.values() if r.state == UnitState.EXECUTING)

    def executing(self) -> int:
        with self.lock:
            return self.executing_locked()

    def claimable(self) -> tuple[int, int]:
        """(units queued or executing, units held in all, flushing included)."""
        with self.lock:
            busy = sum(
                1 for r in self.inflight.values() if r.state in (UnitState.QUEUED, UnitState.EXECUTING)
            )
            return busy, len(self.inflight)

    def lowest_queued_priority(self) -> int | None:
        with self.lock:
            waiting = [r.job.priority for r in self.inflight.values() if r.state == UnitState.QUEUED]
        return min(waiting) if waiting else None

    def held_jobs(self) -> list[Job]:
        """The jobs this worker still answers for (not handed back or abandoned)."""
        with self.lock:
            return [job for r in self.inflight.values() if not r.abandoned.is_set() for job in r.jobs]

    def abandon_queued(self) -> None:
        """Claimed but not started: never run (handed back at shutdown)."""
        with self.lock:
            for running in self.inflight.values():
                if running.state == UnitState.QUEUED:
                    running.abandoned.set()

    def only_queued_left(self) -> bool:
        with self.lock:
            return all(r.state == UnitState.QUEUED for r in self.inflight.values())

    def abandon_all(self) -> list[Job]:
        """Every unit abandoned; returns their jobs, to be handed back."""
        with self.lock:
            left = [job for r in self.inflight.values() for job in r.jobs]
            for running in self.inflight.values():
                running.abandoned.set()
        return left
