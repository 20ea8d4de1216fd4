"""What staff do to the queue, from the admin, the dashboard or the shell: retry, cancel, reprioritise,
requeue and discard dead letters, pause queues and job types, close circuit breakers, edit and run
schedules.

Every operation changes the queue through the api, the engine or the scheduler (which own the state)
and leaves an AuditEntry naming the actor, written in the transaction that makes the change (both
commit or neither), so the admin can show who did what. ``actor`` is a User or
a string such as "cli".

Three verbs for running something again, each with one meaning:

- ``run_now``: a pending job (waiting for its delay or its retry's backoff) becomes due now; it keeps
  its attempts (``jobs.api.run_now``).
- ``requeue``: a dead letter becomes a fresh pending job (attempts from zero), at most once
  (``jobs.api.requeue``).
- ``retry`` (staff's button): whichever of the two a job needs: run now if pending, requeue its dead
  letter if dead.

``BulkResult`` is what an operation on several objects did (done, skipped with the reason); it is not
``jobs.execution.Outcome``, the result of running one job.

``bulk`` runs one of retry, cancel, requeue, discard on every job or dead letter matching a
``BulkFilter``, in batches by id (``JOBS_BULK_BATCH_SIZE`` rows per transaction, each batch committing
with one audit row that records the filter and the batch's counts), never one transaction over a
million rows. A row already done no longer matches (a requeued dead letter is closed, a cancelled job
finished, a retried job due), so running the same bulk action again after a crash finishes the rest.
"""

from jobs.staff.breakers import close_breaker  # noqa: F401
from jobs.staff.by_filter import (  # noqa: F401
    BULK_ACTIONS,
    DEAD_LETTER_ACTIONS,
    JOB_ACTIONS,
    BulkCounts,
    BulkFilter,
    bulk,
    bulk_candidates,
    bulk_count,
    parse_moment,
)
from jobs.staff.operations import (  # noqa: F401
    BulkResult,
    audit,
    cancel,
    closed_reason,
    discard,
    edit_and_requeue,
    enqueue,
    known_queues,
    pause_queue,
    pause_type,
    prune,
    register_known_queues,
    requeue,
    requeue_type,
    resume_queue,
    resume_type,
    retry,
    run_now,
    run_schedule,
    save_schedule,
    set_priority,
    set_schedule_enabled,
)
