"""A worker's units of work: a job, or a batch of jobs of one type, claimed together, and the states
they go through. Shared by the claim loop (jobs.worker), the thread pool (jobs.pool) and the
completer (jobs.completer)."""

import enum
import threading
from dataclasses import dataclass, field

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
    cancel_event: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)
    pending: int = 0  # successes of this unit still waiting to be flushed
    lost: set[int] = field(default_factory=set)  # jobs found reclaimed by another worker (logged once)
    key: int = 0  # the unit's key in Worker.inflight: its first job's id, kept if that job is dropped

    def __post_init__(self):
        self.key = self.jobs[0].id

    @property
    def job(self) -> Job:
        return self.jobs[0]
