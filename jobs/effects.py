"""Making a handler's effects happen once although a job may run more than once (delivery is at least
once: a worker can die after the effect and before recording success).

- Database effects: ``with effect_once(key) as first:`` records ``key`` in the transaction that makes
  the effect; a second run finds the key and skips. Exactly once.
- External effects (email, HTTP): ``external_effect(key, send)`` checks a sent-marker, calls ``send``
  and records the marker; a duplicate needs a crash in the moment between the two.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from django.db import IntegrityError, transaction

from jobs.models import Effect

T = TypeVar("T")


@contextmanager
def effect_once(key: str, *, job_id: int | None = None) -> Iterator[bool]:
    """A transaction in which ``key`` is recorded; yields True the first time, False ever after.

    If the body raises, the transaction (and the record of ``key``) rolls back.
    """
    with transaction.atomic():
        try:
            with transaction.atomic():
                Effect.objects.create(key=key, job_id=job_id)
        except IntegrityError:
            yield False
            return
        yield True


def already_done(key: str) -> bool:
    return Effect.objects.filter(key=key).exists()


def external_effect(key: str, send: Callable[[], T], *, job_id: int | None = None) -> tuple[bool, T | None]:
    """Call ``send()`` unless ``key`` was marked sent; mark it after. Returns (sent now, its result)."""
    if already_done(key):
        return False, None
    result = send()
    Effect.objects.get_or_create(key=key, defaults={"job_id": job_id})
    return True, result
