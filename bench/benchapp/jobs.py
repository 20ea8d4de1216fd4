import time

from pydantic import BaseModel

from jobs.api import job


class Item(BaseModel):
    i: int = 0


@job("bench.noop", payload=Item, queue="bench")
def noop(payload, ctx):
    return None


@job("bench.latency", payload=Item, queue="bench")
def latency(payload, ctx):
    """Returns when the handler started (wall clock), for the enqueue-to-start latency."""
    return time.time()


class Nap(BaseModel):
    ms: float = 2.0


@job("bench.nap", payload=Nap, queue="bench")
def nap(payload, ctx):
    """A job that takes a little time (a few milliseconds of I/O wait), for backlog scenarios."""
    time.sleep(payload.ms / 1000)


class Keyed(BaseModel):
    key: str
    ms: float = 1.0


@job("bench.fair", payload=Keyed, queue="bench", fair_key=lambda p: p.key)
def fair(payload, ctx):
    """A 1 ms job of one key (a tenant, an endpoint), for the fairness scenario."""
    time.sleep(payload.ms / 1000)
