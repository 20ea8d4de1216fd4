"""Job types: a handler function, its payload model and its options, registered in code."""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import Job, Priority


class Rate(NamedTuple):
    """So many events per period of seconds: ``"120/m"`` is Rate(120, 60)."""

    limit: int
    period: int


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


def parse_rate(text: str, *, minimum: int = 1) -> Rate:
    """'120/m' -> Rate(120, 60); '5/10s' -> Rate(5, 10); 'N/s', 'N/m', 'N/h', 'N/d' or 'N/<k>s'.
    Raises ValueError for anything else, or a limit below ``minimum``. The one parser of rate strings:
    job types' rate limits, and the shop's request throttles."""
    match = _RATE.match(text or "")
    if not match or int(match.group(1)) < minimum:
        raise ValueError(f"invalid rate limit {text!r}: expected 'N/s', 'N/m', 'N/h', 'N/d' or 'N/<k>s'")
    count, multiple, unit = match.groups()
    return Rate(int(count), (int(multiple) if multiple else 1) * _UNITS[unit])


@dataclass(frozen=True)
class RateLimit:
    """A rate limit held per key: ``RateLimit("10/s", key=lambda payload: payload.endpoint_id)`` lets
    each key start 10 jobs a second across all workers (the key is computed when the job is enqueued);
    ``@job(rate_limit=("10/s", key_function))`` says the same. A key over its limit waits without
    using an attempt while the type's other keys run, and the type's keys share the workers fairly
    (see ``jobs.fairshare``)."""

    rate: str
    key: Callable[[Any], Any]

    def __post_init__(self) -> None:
        parse_rate(self.rate)
        if not callable(self.key):
            raise ValueError(f"a rate limit's key must be a function of the payload, not {self.key!r}")


Weights = dict[str, float] | Callable[[str], float]


def as_rate_limit(value: "str | RateLimit | tuple | None") -> "tuple[str | None, Callable | None]":
    """``rate_limit=`` as (the rate string, its key function or None); ValueError for anything else."""
    if value is None or isinstance(value, str):
        if value is not None:
            parse_rate(value)  # fail at import time, not at claim time
        return value, None
    if isinstance(value, tuple) and len(value) == 2:
        value = RateLimit(*value)
    if isinstance(value, RateLimit):
        return value.rate, value.key
    raise ValueError(
        f"rate_limit must be 'N/period', RateLimit('N/period', key=...) or ('N/period', key), not {value!r}"
    )


def check_weights(weights: Weights | None) -> None:
    if weights is None or callable(weights):
        return
    if not isinstance(weights, dict):
        raise ValueError(f"weights must be a dict of key -> weight or a function of the key, not {weights!r}")
    for key, weight in weights.items():
        if not isinstance(weight, int | float) or weight <= 0:
            raise ValueError(f"the weight of key {key!r} must be a positive number, not {weight!r}")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits about base * 2**(n-1) seconds, at most cap."""

    base: float = 5.0
    cap: float = 3600.0
    jitter: float = 0.5  # the delay is drawn from [delay * (1 - jitter), delay]

    def delay(self, attempt: int) -> timedelta:
        raw = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return timedelta(seconds=raw * (1 - self.jitter * random.random()))


@dataclass(frozen=True)
class Breaker:
    """A circuit breaker for a job type (per concurrency key, for a type that declares one): at
    ``failures`` failed attempts within ``window`` seconds, across every worker, workers stop claiming
    its jobs; after ``cooldown`` seconds one probe job runs, whose success closes the breaker and whose
    failure opens it for another cooldown. See jobs.breakers."""

    failures: int = 5
    window: float = 60.0
    cooldown: float = 120.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"Breaker(failures=...) must be at least 1, not {self.failures!r}")
        for name in ("window", "cooldown"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Breaker({name}=...) must be a positive number of seconds")


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Callable[..., Any]
    payload: type[BaseModel]
    queue: str = "default"
    priority: int = Priority.NORMAL
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float = 300.0
    rate_limit: str | None = None
    concurrency_key: Callable[[Any], str] | None = None
    concurrency_limit: int = 1
    payload_version: int = 1
    upgrade: Callable[[dict, int], dict] | None = None
    batch_size: int = 1
    max_snoozes: int = 10
    expires: timedelta | None = None  # from the job's due time (run_at) to when it is cancelled unrun
    breaker: Breaker | None = None
    rate_key: Callable[[Any], Any] | None = None  # the rate limit holds per key (RateLimit)
    fair_key: Callable[[Any], Any] | None = None
    weights: Weights | None = None  # fair share: a key's share of the claims, 1 unless named
    rate: Rate | None = field(init=False, default=None)  # rate_limit parsed, once

    def __post_init__(self) -> None:
        if self.rate_limit:
            object.__setattr__(self, "rate", parse_rate(self.rate_limit))

    @property
    def share_key(self) -> Callable[[Any], Any] | None:
        """The function giving a job's ``fair_key``: the rate limit's key, else ``fair_key``, else the
        concurrency key; None for a type without keys (the plain claim)."""
        return self.rate_key or self.fair_key or self.concurrency_key

    def weight(self, key: str) -> float:
        if self.weights is None:
            return 1.0
        if callable(self.weights):
            weight = self.weights(key)
            return float(weight) if isinstance(weight, int | float) and weight > 0 else 1.0
        return float(self.weights.get(key, 1.0))


def as_duration(value: timedelta | float | None, name: str) -> timedelta | None:
    """Seconds or a timedelta as a timedelta (None stays None); a duration must be positive."""
    if value is None:
        return None
    if not isinstance(value, timedelta):
        value = timedelta(seconds=float(value))
    if value <= timedelta(0):
        raise ValueError(f"{name} must be a positive duration, not {value}")
    return value


_registry: dict[str, JobType] = {}
_resolvers: dict[str, Callable[[str], JobType | None]] = {}


def job(
    name: str,
    *,
    payload: type[BaseModel],
    queue: str = "default",
    priority: int = Priority.NORMAL,
    max_attempts: int = 3,
    backoff: Backoff | None = None,
    timeout: float = 300.0,
    rate_limit: "str | RateLimit | tuple | None" = None,
    concurrency_key: Callable[[Any], str] | None = None,
    concurrency_limit: int = 1,
    payload_version: int = 1,
    upgrade: Callable[[dict, int], dict] | None = None,
    batch_size: int = 1,
    max_snoozes: int = 10,
    expires: timedelta | float | None = None,
    breaker: Breaker | None = None,
    fair_key: Callable[[Any], Any] | None = None,
    weights: Weights | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the handler of job type ``name``.

    The handler is called as ``handler(payload, ctx)`` with the validated payload model and a
    ``JobContext``; with ``batch_size > 1`` it is called as ``handler(items, ctx)`` with a list of
    ``(job_id, payload)`` pairs and returns a dict ``{job_id: result or exception}``.

    ``max_snoozes``: how often a handler may ask to run later (``Snooze``) without using an attempt.
    ``expires``: a job not claimed within that long of being due is cancelled (reason ``expired``).
    ``breaker``: a circuit breaker (``Breaker(failures=5, window=60, cooldown=120)``), per concurrency
    key when the type declares one.
    ``rate_limit``: ``"10/s"`` for the type, or ``RateLimit("10/s", key=...)`` (or ``("10/s", key)``)
    per key. ``fair_key``: the key claims rotate over when the type has neither a rate-limit key nor a
    concurrency key; ``weights``: ``{"big": 3}`` or a function of the key (see ``jobs.fairshare``).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if max_snoozes < 0:
        raise ValueError("max_snoozes must be 0 or more")
    expires = as_duration(expires, "expires")
    if breaker is not None and not isinstance(breaker, Breaker):
        raise TypeError(f"breaker must be a jobs.api.Breaker, not {breaker!r}")
    rate_limit, rate_key = as_rate_limit(rate_limit)
    if fair_key is not None and (rate_key is not None or not callable(fair_key)):
        raise ValueError(
            "fair_key must be a function of the payload, and a type with a per-key rate limit shares by"
            " the rate limit's key: declare one of them"
        )
    check_weights(weights)
    if weights is not None and (rate_key or fair_key or concurrency_key) is None:
        raise ValueError("weights need a key to weigh: a rate limit's key, fair_key or concurrency_key")

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        existing = _registry.get(name)
        if existing is not None and existing.handler.__qualname__ != func.__qualname__:
            raise ValueError(f"job type {name!r} is already registered by {existing.handler!r}")
        _registry[name] = JobType(
            name=name,
            handler=func,
            payload=payload,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            backoff=backoff or Backoff(),
            timeout=timeout,
            rate_limit=rate_limit,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            payload_version=payload_version,
            upgrade=upgrade,
            batch_size=batch_size,
            max_snoozes=max_snoozes,
            expires=expires,
            breaker=breaker,
            rate_key=rate_key,
            fair_key=fair_key,
            weights=weights,
        )
        func.job_type = name
        return func

    return register


def register_resolver(prefix: str, resolve: Callable[[str], JobType | None]) -> None:
    """Let ``resolve(name)`` supply job types under ``prefix`` that no module registered up front.

    For families of types declared elsewhere (a ``django_tasks`` task per module path): a worker
    meets the name in a claimed row and resolves it then. ``resolve`` returns the type or None
    (unknown); what it returns is kept. Types with a rate limit or concurrency key must still be
    registered up front, since claiming consults them before any row names them.
    """
    _resolvers[prefix] = resolve


def get_job_type(name: str) -> JobType:
    try:
        return _registry[name]
    except KeyError:
        pass
    for prefix, resolve in _resolvers.items():
        if name.startswith(prefix):
            job_type = resolve(name)
            if job_type is not None:
                return _registry.setdefault(name, job_type)
    raise UnknownJobType(name)


def job_types() -> dict[str, JobType]:
    return dict(_registry)


def unregister(name: str) -> None:
    """Forget a job type (tests use it to simulate a deploy that removed one)."""
    _registry.pop(name, None)


# -- payloads --------------------------------------------------------------------------------------


def validate_payload(job_type: JobType, payload: Any) -> dict:
    """The payload as its model dumps it to JSON; raises InvalidPayload with the model's errors."""
    try:
        if isinstance(payload, job_type.payload):
            model = payload
        elif isinstance(payload, BaseModel):
            model = job_type.payload.model_validate(payload.model_dump())
        else:
            model = job_type.payload.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayload(job_type.name, exc.errors(include_url=False, include_context=False)) from None
    return model.model_dump(mode="json")


def load_payload(job_type: JobType, job: Job) -> BaseModel:
    """The stored payload, upgraded from an older version if needed, as the type's model."""
    data = job.payload
    if job.payload_version < job_type.payload_version:
        if job_type.upgrade is None:
            raise InvalidPayload(
                job_type.name,
                [{"loc": (), "msg": f"stored payload version {job.payload_version} and no upgrade function"}],
            )
        try:
            data = job_type.upgrade(dict(data), job.payload_version)
        except Exception as exc:  # a row the upgrade cannot read will not read better next time
            raise InvalidPayload(
                job_type.name,
                [{"loc": (), "msg": f"cannot upgrade from version {job.payload_version}: {exc!r}"}],
            ) from None
    try:
        return job_type.payload.model_validate(data)
    except ValidationError as exc:
        raise InvalidPayload(job_type.name, exc.errors(include_url=False, include_context=False)) from None
