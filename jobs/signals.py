"""The job lifecycle as Django signals: the way to plug other tools (tracing, error reports, audit)
into the queue without touching the engine.

Every signal is sent with ``sender=Job`` and ``job`` (the row as the engine holds it):

- ``job_enqueuing``: a job was built and validated and is about to be stored; a receiver may set fields
  of the unsaved row (``trace_context``). For ``enqueue_many`` it is sent once, for the first job, whose
  fields the others copy.
- ``job_enqueued``: the row was inserted (inside the caller's transaction: use ``transaction.on_commit``
  for effects that must wait for the commit).
- ``job_started``: in the thread that runs the handler, just before it, inside a context of its own
  (``contextvars``): what a receiver sets there is seen by the handler and gone after the job.
- ``job_succeeded`` (``result``): the success was recorded.
- ``job_failed`` (``error``, ``will_retry=True``): an attempt failed and the job waits for its retry.
- ``job_dead`` (``error``): the job was moved to the dead letters (after its transaction committed).
- ``job_snoozed`` (``seconds``): the handler asked to run later (Snooze) and the job waits, its attempt
  given back.

Receivers run in the worker; one that raises is logged and does not disturb the job.
"""

import logging

from django.dispatch import Signal

log = logging.getLogger("jobs.signals")

# Sent for every job run: receivers are looked up once per sender and cached (as Django's model
# signals do), not resolved through their weak references on every send.
job_enqueuing = Signal(use_caching=True)
job_enqueued = Signal(use_caching=True)
job_started = Signal(use_caching=True)
job_succeeded = Signal(use_caching=True)
job_failed = Signal(use_caching=True)
job_dead = Signal(use_caching=True)
job_snoozed = Signal(use_caching=True)


def send(signal: Signal, job, **kwargs) -> None:
    """Send ``signal`` for ``job``; a receiver's exception is logged, never raised into the engine.
    Without receivers this returns at once (send_robust's own check)."""
    for receiver_fn, response in signal.send_robust(sender=type(job), job=job, **kwargs):
        if isinstance(response, Exception):
            log.error(
                "job %s %s: signal receiver %r failed: %r",
                job.id,
                job.type,
                getattr(receiver_fn, "__qualname__", receiver_fn),
                response,
                exc_info=response,
            )


job_finished = Signal()
"""Sent with ``jobs`` (Job instances as claimed, not re-read) by the process that recorded their final
outcome (succeeded, dead or cancelled), once per outcome, after the transaction recording it (or
inside the caller's, in immediate mode). The Tasks backend sends ``task_finished`` from it."""
