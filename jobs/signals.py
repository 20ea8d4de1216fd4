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
import weakref

from django.dispatch import Signal
from django.dispatch.dispatcher import NONE_ID, _make_id

log = logging.getLogger("jobs.signals")


class JobSignal(Signal):
    """A signal sent for every job run, thousands of times a second in a drain: its receivers for a
    sender are looked up once, until the next connect or disconnect, and :func:`send` calls them in a
    loop of its own. ``send_robust`` builds the live receivers' lists and a list of responses on every
    send (some 2 us a send, twice a job). Weak receivers stay weak: a receiver collected meanwhile is
    skipped. Async receivers go through ``send_robust`` as usual."""

    def __init__(self) -> None:
        super().__init__(use_caching=True)
        self._entries: dict = {}  # sender -> ((receiver or its weak reference, is weak), ...) or None

    def connect(self, *args, **kwargs):
        result = super().connect(*args, **kwargs)
        with self.lock:  # after the change: a lookup meanwhile cannot keep the old receivers
            self._entries = {}
        return result

    def disconnect(self, *args, **kwargs):
        result = super().disconnect(*args, **kwargs)
        with self.lock:  # after the change: a lookup meanwhile cannot keep the old receivers
            self._entries = {}
        return result

    def entries(self, sender) -> tuple | None:
        """The receivers for ``sender`` as stored (weak references not resolved), or None when one of
        them is async (then send through ``send_robust``)."""
        try:
            return self._entries[sender]
        except KeyError:
            pass
        with self.lock:
            key = _make_id(sender)
            found = []
            for (_receiver_key, sender_key), receiver, is_async in self.receivers:
                if sender_key == NONE_ID or sender_key == key:
                    if is_async:
                        found = None
                        break
                    found.append((receiver, isinstance(receiver, weakref.ReferenceType)))
            entries = self._entries[sender] = None if found is None else tuple(found)
        return entries


# Sent for every job run (see JobSignal).
job_enqueuing = JobSignal()
job_enqueued = JobSignal()
job_started = JobSignal()
job_succeeded = JobSignal()
job_failed = JobSignal()
job_dead = JobSignal()
job_snoozed = JobSignal()


def send(signal: JobSignal, job, **kwargs) -> None:
    """Send ``signal`` for ``job``; a receiver's exception is logged, never raised into the engine.
    Without receivers this returns at once."""
    sender = type(job)
    entries = signal.entries(sender)
    if entries is None:
        for receiver, response in signal.send_robust(sender=sender, job=job, **kwargs):
            if isinstance(response, Exception):
                _failed(receiver, job, response)
        return
    for receiver, weak in entries:
        if weak:
            receiver = receiver()
            if receiver is None:  # collected since it was connected
                continue
        try:
            receiver(signal=signal, sender=sender, job=job, **kwargs)
        except Exception as exc:
            _failed(receiver, job, exc)


def _failed(receiver, job, error: Exception) -> None:
    log.error(
        "job %s %s: signal receiver %r failed: %r",
        job.id,
        job.type,
        getattr(receiver, "__qualname__", receiver),
        error,
        exc_info=error,
    )


job_finished = Signal()
"""Sent with ``jobs`` (Job instances as claimed, not re-read) by the process that recorded their final
outcome (succeeded, dead or cancelled), once per outcome, after the transaction recording it (or
inside the caller's, in immediate mode). The Tasks backend sends ``task_finished`` from it."""
