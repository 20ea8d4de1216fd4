"""Job types for the queue's own tests. Handlers record each run in the Run table."""

import asyncio
import os
import signal
import time

from asgiref.sync import sync_to_async
from django.utils import timezone
from pydantic import BaseModel

from jobs.api import Backoff, Breaker, PermanentError, RateLimit, Snooze, job
from tests.testapp.models import Run


class Key(BaseModel):
    key: str = ""


class Sleep(BaseModel):
    key: str = ""
    seconds: float


class Flaky(BaseModel):
    key: str = ""
    failures: int


def record(payload, ctx) -> Run:
    return Run.objects.create(
        key=payload.key, job_id=ctx.job_id, attempt=ctx.attempt, pid=os.getpid(), started_at=timezone.now()
    )


@job("test.noop", payload=Key)
def noop(payload, ctx):
    return None


@job("test.record", payload=Key, max_attempts=5, backoff=Backoff(base=0.01, cap=0.05))
def record_run(payload, ctx):
    run = record(payload, ctx)
    return {"run": run.id}


@job("test.sleep", payload=Sleep, max_attempts=5, backoff=Backoff(base=0.01, cap=0.05))
def sleep(payload, ctx):
    run = record(payload, ctx)
    time.sleep(payload.seconds)
    run.finished_at = timezone.now()
    run.save(update_fields=["finished_at"])
    return {"slept": payload.seconds}


@job("test.flaky", payload=Flaky, max_attempts=4, backoff=Backoff(base=0.01, cap=0.05, jitter=0))
def flaky(payload, ctx):
    record(payload, ctx)
    if ctx.attempt <= payload.failures:
        raise RuntimeError(f"failure on attempt {ctx.attempt}")
    return "ok"


@job("test.permanent", payload=Key, max_attempts=5)
def permanent(payload, ctx):
    record(payload, ctx)
    raise PermanentError("the card number is malformed; retrying cannot help")


@job("test.suicide", payload=Key, max_attempts=2)
def suicide(payload, ctx):
    record(payload, ctx)
    os.kill(os.getpid(), signal.SIGKILL)


class Raise(BaseModel):
    key: str = ""
    kind: str  # SystemExit or KeyboardInterrupt


@job("test.raises", payload=Raise, max_attempts=2, backoff=Backoff(base=0.01, cap=0.05))
def raises(payload, ctx):
    """A library calling sys.exit(), or a stray KeyboardInterrupt."""
    record(payload, ctx)
    raise {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt()}[payload.kind]


@job("test.timeout", payload=Sleep, timeout=0.5, max_attempts=2, backoff=Backoff(base=0.01, cap=0.05))
def too_slow(payload, ctx):
    record(payload, ctx)
    time.sleep(payload.seconds)
    return "late"


@job("test.cancellable", payload=Key, timeout=60)
def cancellable(payload, ctx):
    record(payload, ctx)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        ctx.progress(50)
        time.sleep(0.05)
    return "not cancelled"


class Group(BaseModel):
    key: str = ""
    group: str
    seconds: float = 0.2


@job("test.limited", payload=Key, rate_limit="10/s", max_attempts=1)
def limited(payload, ctx):
    record(payload, ctx)


@job(
    "test.keyed",
    payload=Group,
    concurrency_key=lambda p: f"group:{p.group}",
    concurrency_limit=1,
    max_attempts=3,
    backoff=Backoff(base=0.01, cap=0.05),
)
def keyed(payload, ctx):
    run = record(Key(key=payload.group), ctx)
    time.sleep(payload.seconds)
    run.finished_at = timezone.now()
    run.save(update_fields=["finished_at"])


@job("test.per_key", payload=Group, rate_limit=RateLimit("3/h", key=lambda p: p.group), max_attempts=1)
def per_key(payload, ctx):
    """Three starts per group an hour: the rest of a group waits (the window outlasts any test)."""
    record(Key(key=payload.group), ctx)


@job("test.fair", payload=Group, fair_key=lambda p: p.group, max_attempts=1)
def fair(payload, ctx):
    """Claimed round-robin across groups; records its group."""
    record(Key(key=payload.group), ctx)


@job("test.weighted", payload=Group, fair_key=lambda p: p.group, weights={"big": 3}, max_attempts=1)
def weighted(payload, ctx):
    record(Key(key=payload.group), ctx)


@job(
    "test.keyed_limited",
    payload=Group,
    rate_limit=("2/h", lambda p: p.group),
    concurrency_key=lambda p: f"group:{p.group}",
    max_attempts=1,
)
def keyed_limited(payload, ctx):
    """A per-key rate limit and a concurrency key together."""
    record(Key(key=payload.group), ctx)


class Greeting(BaseModel):
    """Version 2: ``name`` was split into first and last name."""

    first_name: str
    last_name: str


def upgrade_greeting(data: dict, version: int) -> dict:
    if version < 2:
        first, _, last = data.pop("name").partition(" ")
        data.update(first_name=first, last_name=last)
    return data


@job("test.versioned", payload=Greeting, payload_version=2, upgrade=upgrade_greeting)
def versioned(payload, ctx):
    return f"hello {payload.first_name} {payload.last_name}"


class Number(BaseModel):
    n: int


@job("test.batch", payload=Number, batch_size=5, max_attempts=1)
def batch(items, ctx):
    Run.objects.create(
        key=",".join(str(p.n) for _, p in items),
        job_id=ctx.job_id,
        attempt=ctx.attempt,
        pid=os.getpid(),
        started_at=timezone.now(),
    )
    return {job_id: (ValueError(f"{p.n} is unlucky") if p.n == 13 else p.n * 2) for job_id, p in items}


@job("test.effect", payload=Key)
def effect(payload, ctx):
    from jobs.effects import effect_once, external_effect

    with effect_once(f"ledger:{payload.key}") as first:
        if first:
            record(payload, ctx)
    sent, _ = external_effect(f"mail:{payload.key}", lambda: record(Key(key=f"mail:{payload.key}"), ctx))
    return {"sent": sent}


@job("test.watch", payload=Key, timeout=60, max_attempts=3, backoff=Backoff(base=0.01, cap=0.05))
def watch(payload, ctx):
    """Works for up to 30 s, checking ``ctx.cancelled`` between steps; notes on its Run row that it saw
    the cancellation and stopped."""
    run = record(payload, ctx)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.02)
    run.key = f"{payload.key}:cancelled" if ctx.cancelled else f"{payload.key}:finished"
    run.finished_at = timezone.now()
    run.save(update_fields=["key", "finished_at"])
    return "stopped"


@job("test.slow_effect", payload=Sleep, max_attempts=5, backoff=Backoff(base=0.01, cap=0.05))
def slow_effect(payload, ctx):
    """Works ``seconds``, then makes its database effect once (a Run row keyed by the payload's key,
    through effect_once), however often it runs."""
    import threading

    from jobs.effects import effect_once

    # An Event's wait, not time.sleep: under libfaketime (the clock-skew tests) Python's sleep fails
    # with EINVAL.
    threading.Event().wait(payload.seconds)
    with effect_once(f"test.slow_effect:{payload.key}", job_id=ctx.job_id) as first:
        if first:
            record(payload, ctx)
    return {"first": first}


class Customer(BaseModel):
    email: str
    order_number: str = ""


@job("test.leaky", payload=Customer, max_attempts=2, backoff=Backoff(base=0.01, cap=0.05, jitter=0))
def leaky(payload, ctx):
    """Fails on every attempt with customer data in its message (error reports must filter it out)."""
    from shop import logging as log_context

    if payload.order_number:
        log_context.bind(order_number=payload.order_number)
    raise RuntimeError(f"cannot mail {payload.email} about card tok_4242secret on attempt {ctx.attempt}")


TRACED: list[dict] = []  # what test.traced saw of the current span, run by run (tests/ops/test_tracing.py)


@job("test.traced", payload=Key)
def traced(payload, ctx):
    """Notes the span current in its handler; a "parent" enqueues a "child" from inside its run."""
    from opentelemetry import trace

    from jobs.api import enqueue

    context = trace.get_current_span().get_span_context()
    TRACED.append(
        {
            "key": payload.key,
            "valid": context.is_valid,
            "trace_id": context.trace_id,
            "sampled": context.trace_flags.sampled,
        }
    )
    if payload.key == "parent":
        enqueue("test.traced", {"key": "child"})


class Snoozy(BaseModel):
    key: str = ""
    times: int  # snooze on the first so many runs, then succeed
    seconds: float = 0.5
    returned: bool = False  # return the Snooze instead of raising it


@job(
    "test.snoozy",
    payload=Snoozy,
    max_attempts=2,
    max_snoozes=3,
    backoff=Backoff(base=0.01, cap=0.05, jitter=0),
)
def snoozy(payload, ctx):
    record(payload, ctx)
    if Run.objects.filter(job_id=ctx.job_id).count() <= payload.times:
        if payload.returned:
            return Snooze(payload.seconds)
        raise Snooze(payload.seconds)
    return {"attempt": ctx.attempt}


@job("test.parents", payload=Key)
def parent_results(payload, ctx):
    """Returns what it read of its parents, as ``[[parent id, result], ...]`` (JSON has no int keys)."""
    return {"parents": [[parent_id, result] for parent_id, result in ctx.parent_results.items()]}


class Dependency(BaseModel):
    """A job calling a dependency that is down while the file ``flag`` exists."""

    key: str = ""
    flag: str
    snooze: bool = False  # the dependency answers "not now" (429) instead of failing


def call_dependency(payload, ctx):
    record(payload, ctx)
    if os.path.exists(payload.flag):
        if payload.snooze:
            raise Snooze(0.01)
        raise RuntimeError("the dependency is down")
    return {"ok": True}


# Cooldowns of an hour: tests end a cooldown by moving the breaker's probe_at, never by waiting.
@job(
    "test.breaker",
    payload=Dependency,
    max_attempts=20,
    max_snoozes=100,
    backoff=Backoff(base=0.01, cap=0.05),
    breaker=Breaker(failures=3, window=60, cooldown=3600),
)
def breaker(payload, ctx):
    return call_dependency(payload, ctx)


@job(
    "test.breaker_keyed",
    payload=Dependency,
    concurrency_key=lambda p: f"endpoint:{p.key}",
    concurrency_limit=5,
    max_attempts=20,
    backoff=Backoff(base=0.01, cap=0.05),
    breaker=Breaker(failures=2, window=60, cooldown=3600),
)
def breaker_keyed(payload, ctx):
    return call_dependency(payload, ctx)


# -- async def handlers (jobs.aio) ------------------------------------------------------------------


class Fetch(BaseModel):
    key: str = ""
    port: int


async def arecord(payload, ctx, key: str | None = None) -> Run:
    return await sync_to_async(record)(Key(key=key or payload.key), ctx)


@job("test.async_fetch", payload=Fetch, max_attempts=1)
async def async_fetch(payload, ctx):
    """GETs 127.0.0.1:<port> with asyncio streams; returns the body."""
    await arecord(payload, ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", payload.port)
    try:
        writer.write(f"GET /{payload.key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"answered {head.splitlines()[0]!r}")
    return body.decode()


@job("test.async_flaky", payload=Flaky, max_attempts=4, backoff=Backoff(base=0.01, cap=0.05, jitter=0))
async def async_flaky(payload, ctx):
    await arecord(payload, ctx)
    await asyncio.sleep(0)
    if ctx.attempt <= payload.failures:
        raise RuntimeError(f"failure on attempt {ctx.attempt}")
    return "ok"


async def wait_until_stopped(payload, ctx):
    """Waits a minute, unless its coroutine is cancelled: then records Run(key="cancelled:<key>")."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await arecord(payload, ctx, f"cancelled:{payload.key}")
        raise
    return "never stopped"


@job("test.async_stall", payload=Key, timeout=0.5, max_attempts=1)
async def async_stall(payload, ctx):
    await arecord(payload, ctx)
    return await wait_until_stopped(payload, ctx)


@job("test.async_cancellable", payload=Key, timeout=60)
async def async_cancellable(payload, ctx):
    await arecord(payload, ctx)
    await sync_to_async(ctx.progress)(50)
    return await wait_until_stopped(payload, ctx)


@job("test.async_sleep", payload=Sleep, max_attempts=5, backoff=Backoff(base=0.01, cap=0.05))
async def async_sleep(payload, ctx):
    run = await arecord(payload, ctx)
    await asyncio.sleep(payload.seconds)
    run.finished_at = timezone.now()
    await run.asave(update_fields=["finished_at"])
    return {"slept": payload.seconds}


@job("test.async_outcomes", payload=Key, max_attempts=3, max_snoozes=1)
async def async_outcomes(payload, ctx):
    """An async handler's other outcomes: key "snooze" returns a Snooze, "permanent" raises a
    PermanentError, "orm" reads through Django's async ORM, "unjsonable" returns a set."""
    await asyncio.sleep(0)
    if payload.key == "snooze":
        return Snooze(60) if ctx.job.snoozes == 0 else "snoozed once"
    if payload.key == "permanent":
        raise PermanentError("never going to work")
    if payload.key == "orm":
        return await Run.objects.filter(key="orm").acount()
    if payload.key == "unjsonable":
        return {1, 2}
    return {"attempt": ctx.attempt}


@job("test.async_batch", payload=Key, batch_size=3, max_attempts=1)
async def async_batch(items, ctx):
    """A batch handler as a coroutine: key "bad" fails for good, the others return their key upper-cased."""
    await asyncio.sleep(0)
    return {
        job_id: PermanentError("bad key") if payload.key == "bad" else payload.key.upper()
        for job_id, payload in items
    }
