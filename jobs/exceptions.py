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
