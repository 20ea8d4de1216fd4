from datetime import timedelta


class JobError(Exception):
    """Base class of the queue's own errors."""


class UnknownJobType(JobError, LookupError):
    def __init__(self, name: str):
        super().__init__(f"unknown job type {name!r}: no handler is registered under that name")
        self.name = name


class InvalidPayload(JobError, ValueError):
    """A payload that its job type's model refuses. Nothing was stored."""

    def __init__(self, job_type: str, errors: list[dict]):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(payload)'}: {e.get('msg')}" for e in errors
        )
        super().__init__(f"invalid payload for job type {job_type!r}: {details}")
        self.job_type = job_type
        self.errors = errors


class PermanentError(JobError):
    """Raised by a handler when retrying cannot help: the job goes to the dead letters at once."""


class JobTimeout(JobError):
    """The handler ran longer than its job type's timeout."""


class WorkerLost(JobError):
    """The worker running the job stopped heartbeating (killed, host lost)."""


class JobCancelled(JobError):
    """Raised by a handler (or ``ctx.raise_if_cancelled()``) to end a cancelled job early."""


class Snooze(Exception):
    """Raised (or returned) by a handler: run this job again in ``seconds`` without using an attempt.

    For a receiver that says "not now" (HTTP 429 or 503 with Retry-After): waiting is not a failure.
    A job type allows ``max_snoozes`` of them (``@job``); past that a snooze counts as a failed attempt
    (SnoozeLimitExceeded), so a job that is always told to wait still ends in the dead letters.
    """

    def __init__(self, seconds: float | timedelta = 60.0):
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        seconds = float(seconds)
        if not seconds >= 0:
            raise ValueError(f"Snooze needs a delay of 0 seconds or more, not {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = seconds


class SnoozeLimitExceeded(JobError):
    """A handler snoozed more often than its job type's max_snoozes: this snooze is a failed attempt."""
