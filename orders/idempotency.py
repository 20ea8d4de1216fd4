"""Idempotency keys as Stripe designs them: a key records how far its request got, and a retry resumes.

A request takes its key (``take``): the first one inserts the row, a retry finds it. Whoever holds the
key's lease works on it; each step of ``orders.services.place_order`` commits its recovery point in
the transaction that does the step's work (``Lease.advance``), so the row never claims more or less
than the database holds. A key is never given back once anything was stored: a request that fails
leaves its recovery point for the retry, and a request that died (its process, or its database
connection) loses its lease after ``settings.IDEMPOTENCY_LEASE`` seconds to the retry that comes next.

Every write of a lease holder is fenced by its lease token, so a request that is taken over (it was
merely slow) cannot record anything after its successor started: the order transitions themselves are
guarded in ``orders.services``, and the charge carries the order number as the gateway's idempotency
key, so the two can at worst repeat a question, never an effect. Times come from the database's clock,
so that web hosts whose clocks disagree still agree on whose lease has expired.
"""

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from orders.models import IdempotencyKey, Order, RecoveryPoint

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another request took this key over (this one was presumed dead): record nothing more."""


@dataclass
class Lease:
    """The right to work on a key, until it expires or is given up. ``recovery_point`` and ``order_id``
    say where the request stands; a fresh key is at STARTED with no order."""

    record_id: int
    token: str
    recovery_point: str
    order_id: int | None

    def advance(self, point: str, *, order: Order | None = None) -> None:
        """Record ``point`` (and the order, once it exists). Call it inside the transaction that does the
        step's work, so both commit or neither does. Raises LeaseLost if the key was taken over."""
        changes: dict[str, Any] = {"recovery_point": point, "locked_at": Now()}
        if order is not None:
            changes["order"] = order
        self._fenced_update(**changes)
        self.recovery_point = point
        if order is not None:
            self.order_id = order.pk

    def finish(self, status: int, body: dict[str, Any], *, order: Order | None = None) -> None:
        """The request's answer is final: store it for replays and let the key go."""
        changes: dict[str, Any] = {"response_status": status, "response_body": body}
        if order is not None and self.order_id is None:
            changes["order"] = order
        self._fenced_update(
            recovery_point=RecoveryPoint.FINISHED, completed_at=Now(), lease="", locked_at=None, **changes
        )
        self.recovery_point = RecoveryPoint.FINISHED

    def release(self) -> None:
        """Give the lease up without finishing (the answer was an error worth retrying): the next retry
        resumes from the recovery point at once instead of waiting for the lease to expire."""
        self._fenced_update(lease="", locked_at=None)

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Run the request's work; if it raises, give the lease up before the error goes on, so that the
        client's retry resumes from the recovery point at once. A database that went away with the
        request cannot be told: the lease then expires by itself after ``settings.IDEMPOTENCY_LEASE``."""
        try:
            yield
        except LeaseLost:
            raise  # the key is another request's now: nothing of ours to give up
        except BaseException:
            try:
                self.release()
            except Exception:
                logger.warning(
                    "Could not release idempotency key %s; it expires by itself",
                    self.record_id,
                    exc_info=True,
                )
            raise

    def _fenced_update(self, **changes: Any) -> None:
        if not IdempotencyKey.objects.filter(pk=self.record_id, lease=self.token).update(**changes):
            raise LeaseLost(f"idempotency key {self.record_id} was taken over by a retry")


@dataclass(frozen=True)
class Finished:
    """The key's request has its final answer: replay it."""

    record: IdempotencyKey


@dataclass(frozen=True)
class InProgress:
    """Another request holds the key and is alive as far as anyone can tell."""

    retry_after: int


@dataclass(frozen=True)
class Mismatch:
    """The key was used with another request body."""


def take(scope: str, key: str, fingerprint: str) -> Lease | Finished | InProgress | Mismatch:
    """Take ``key`` for this request, or say why not. A key whose holder's lease expired is taken over
    (the caller resumes from its ``recovery_point``)."""
    token = secrets.token_hex(16)
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(
                scope=scope, key=key, fingerprint=fingerprint, lease=token, locked_at=Now()
            )
        return Lease(record.pk, token, RecoveryPoint.STARTED, None)
    except IntegrityError:
        pass
    record = IdempotencyKey.objects.filter(scope=scope, key=key).first()
    if record is None:  # keys are only deleted a day after their request: this one is being purged
        return InProgress(retry_after=1)
    if fingerprint and record.fingerprint != fingerprint:
        return Mismatch()
    if record.recovery_point == RecoveryPoint.FINISHED:
        return Finished(record)
    expired = Now() - timedelta(seconds=settings.IDEMPOTENCY_LEASE)
    taken = (
        IdempotencyKey.objects.filter(pk=record.pk)
        .exclude(recovery_point=RecoveryPoint.FINISHED)
        .filter(Q(locked_at=None) | Q(locked_at__lt=expired))
        .update(lease=token, locked_at=Now())
    )
    if not taken:
        record.refresh_from_db()
        if record.recovery_point == RecoveryPoint.FINISHED:
            return Finished(record)
        return InProgress(retry_after=max(1, round(settings.IDEMPOTENCY_LEASE)))
    record.refresh_from_db()
    return Lease(record.pk, token, record.recovery_point, record.order_id)
