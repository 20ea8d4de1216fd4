import asyncio
import time

from pydantic import BaseModel

from bench import slow_http
from jobs.api import Backoff, job


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


class Line(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: str


class Shipment(BaseModel):
    """About 2 KB as JSON: an order's lines and address, as the pipeline's jobs carry."""

    order: str
    email: str
    address: dict[str, str]
    lines: list[Line]
    fail_first: bool = False


@job("bench.pipeline", payload=Shipment, queue="bench", max_attempts=3, backoff=Backoff(base=0.01, cap=0.05))
def pipeline(payload, ctx):
    """Pipeline-like work: reads its payload, fails its first attempt when asked (so that it is retried,
    with its error recorded), and returns a result."""
    if payload.fail_first and ctx.attempt == 1:
        raise RuntimeError(f"warehouse unavailable for {payload.order}")
    return {"order": payload.order, "units": sum(line.quantity for line in payload.lines), "sync": "ok"}


class Keyed(BaseModel):
    key: str
    ms: float = 1.0


@job("bench.fair", payload=Keyed, queue="bench", fair_key=lambda p: p.key)
def fair(payload, ctx):
    """A 1 ms job of one key (a tenant, an endpoint), for the fairness scenario."""
    time.sleep(payload.ms / 1000)


class Get(BaseModel):
    """A URL on 127.0.0.1 to GET, as a webhook delivery would POST to its endpoint."""

    host: str = "127.0.0.1"
    port: int
    path: str = "/"


@job("bench.io", payload=Get, queue="bench", timeout=30)
def io(payload, ctx):
    """One blocking HTTP GET to the io scenario's slow server (bench/slow_http.py)."""
    return slow_http.get(payload.host, payload.port, payload.path)


@job("bench.io_async", payload=Get, queue="bench", timeout=30)
async def io_async(payload, ctx):
    """The same GET from an ``async def`` handler, with asyncio streams."""
    reader, writer = await asyncio.open_connection(payload.host, payload.port)
    try:
        request = f"GET {payload.path} HTTP/1.1\r\nHost: {payload.host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {payload.path}: {head[:40]!r}")
    return len(body)
