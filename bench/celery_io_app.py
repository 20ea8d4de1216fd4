"""The io scenario's job on Celery + Redis (bench/celery_io.py runs it): the same blocking GET as
bench.io, in a task. Imported by the peers' venv (celery, redis), never by the shop.

Redis databases 11 (broker) and 12 (counts) keep it apart from ../shared/bench (1 to 3)."""

import time

import redis
import slow_http  # bench/slow_http.py: this module runs with bench/ as its directory
from celery import Celery

BROKER = "redis://127.0.0.1:6379/11"
app = Celery("bench_io", broker=BROKER)
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False

counts = redis.Redis(host="127.0.0.1", db=12)


@app.task(name="io_get")
def io_get(port: int, path: str) -> int:
    started = time.time()
    size = slow_http.get("127.0.0.1", port, path)
    # As ours are read from the jobs' rows: when each started and finished.
    counts.pipeline().rpush("started", started).rpush("finished", time.time()).execute()
    return size


def reset() -> None:
    redis.Redis(host="127.0.0.1", db=11).flushdb()
    counts.flushdb()


def enqueue(port: int, n: int) -> None:
    for i in range(n):
        io_get.delay(port, f"/{i}")


def progress() -> tuple[int, float, float]:
    """(tasks finished, first start, last finish)"""
    started = [float(v) for v in counts.lrange("started", 0, -1)]
    finished = [float(v) for v in counts.lrange("finished", 0, -1)]
    if not finished:
        return 0, 0.0, 0.0
    return len(finished), min(started), max(finished)
