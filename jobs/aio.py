"""``async def`` handlers: the coroutine a handler returns runs to its end while the handler's thread
waits, so that its outcome is recorded exactly as a sync handler's (jobs.execution), by the same thread,
with the same signals, timeouts and ownership rules of the pool.

The coroutine runs on an event loop kept for the life of the handler's thread, in a thread of its own,
as ``asgiref.sync.async_to_sync`` runs one: the ORM reached from it (Django's async API,
``await Model.objects.aget(...)``, or ``sync_to_async``) runs back in the handler's thread, on its
database connection. ``async_to_sync`` itself builds a thread and an event loop per call (820 us on
this machine under load, against 63 us to run a coroutine on a kept loop): in the io scenario (2,000
jobs each waiting 50 ms on an HTTP server, 64 at once) it ran async handlers at 389 jobs/s against
835 for sync ones; with the kept loop, 653-782 against 849-928 (bench/README.md, "I/O-bound jobs").

Why not one event loop running many jobs at once: a worker runs at most ``--concurrency`` jobs, and at
that bound threads already wait on the network side by side. 64 threads reached 66-73% of the ideal
1,280 jobs/s there, so a loop held to the same 64 jobs could be at most ~1.5x faster, short of issue
19's bar of 2x for adding one; and what bounds threads there is the worker's Python work a job under
the GIL, which an event loop does not make smaller.

- Staff cancelling the job (``ctx.cancelled``) cancels the coroutine at its next ``await``: the attempt
  is recorded as cancelled (a ``JobCancelled``), as ``ctx.raise_if_cancelled()`` would be.
- The job type's timeout cancels it too (``JobTimeout``), which frees the handler's thread at once
  where a sync handler past its timeout keeps its thread until it returns.
- Tasks the coroutine starts and leaves running go on running on the loop, as threads a sync handler
  starts do: await what belongs to the job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncToSync

from jobs.exceptions import JobCancelled, JobTimeout

if TYPE_CHECKING:
    from jobs.execution import JobContext

CANCEL_POLL = 0.1  # seconds between looks at ctx.cancelled (staff cancels are heard per heartbeat)


class _Loop:
    """An event loop in a thread of its own, for one handler thread; stopped when that thread ends
    (its thread-local goes, and this with it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        name = f"{threading.current_thread().name}-loop"
        threading.Thread(target=self._main, name=name, daemon=True).start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def __del__(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)


_local = threading.local()


def run(coroutine: Coroutine[Any, Any, Any], ctx: JobContext, timeout: float) -> Any:
    """What the coroutine returns, or what it raises; JobTimeout after ``timeout`` seconds, and
    JobCancelled once the job is cancelled, both by cancelling it. Runs in the caller's contextvars
    context (what job_started receivers set holds inside)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine.close()
        raise RuntimeError("an async def handler cannot run in a thread whose event loop is running")
    kept = getattr(_local, "loop", None)
    if kept is None:
        kept = _local.loop = _Loop()
    loop = kept.loop
    done: concurrent.futures.Future = concurrent.futures.Future()
    # Sync code the coroutine calls through sync_to_async(thread_sensitive=True), the ORM's async API
    # among it, comes back to this thread meanwhile, as async_to_sync arranges it (this thread may
    # itself be serving an outer async_to_sync: immediate mode entered from async code).
    outer = getattr(AsyncToSync.executors, "current", None)
    executor = AsyncToSync.executors.current = CurrentThreadExecutor(outer)
    AsyncToSync.loop_thread_executors[loop] = executor
    try:
        context = contextvars.copy_context()

        def start() -> None:
            task = loop.create_task(_supervised(coroutine, ctx, timeout), context=context)
            task.add_done_callback(lambda t: _settle(t, done))

        loop.call_soon_threadsafe(start)
        executor.run_until_future(done)
    finally:
        del AsyncToSync.loop_thread_executors[loop]
        AsyncToSync.executors.current = outer
    return done.result()


def _settle(task: asyncio.Task, done: concurrent.futures.Future) -> None:
    if task.cancelled():
        done.set_exception(asyncio.CancelledError())
    elif task.exception() is not None:
        done.set_exception(task.exception())
    else:
        done.set_result(task.result())


async def _supervised(coroutine: Coroutine[Any, Any, Any], ctx: JobContext, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    cancelled_by_us = False

    def look() -> None:
        nonlocal cancelled_by_us, poll
        if ctx.cancelled:
            cancelled_by_us = True
            task.cancel()
        else:
            poll = loop.call_later(CANCEL_POLL, look)

    poll = loop.call_later(CANCEL_POLL, look)
    try:
        async with asyncio.timeout(timeout) as deadline:
            return await coroutine
    except TimeoutError:
        if deadline.expired():
            raise JobTimeout(f"handler ran longer than its timeout of {timeout:g}s") from None
        raise
    except asyncio.CancelledError:
        if cancelled_by_us:
            raise JobCancelled(f"job {ctx.job_id} was cancelled") from None
        raise
    finally:
        poll.cancel()
