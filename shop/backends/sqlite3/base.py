"""SQLite whose write transactions queue for the write lock with short waits.

Every transaction here is ``BEGIN IMMEDIATE`` (it takes SQLite's write lock up front). A writer that
finds the lock taken is left to SQLite's busy handler, which sleeps 1, 2, 5, 10 ... then 100 ms between
tries: under steady contention (three web processes and a worker) a writer that lost a few times
sleeps 100 ms at a stretch while others come and go, and a request's p99 grows to half a second.

So before ``BEGIN IMMEDIATE`` a transaction takes an exclusive ``flock`` on ``<database>.writer``, a
file beside the database shared by every process and thread, and gives it back when the transaction
commits or rolls back (or its process dies: the kernel releases it). A writing statement outside a
transaction (autocommit) holds it for that statement.

How a writer waits for it depends on its thread:

- A process's main thread (a gunicorn sync worker's requests, the worker's claim loop, a management
  command) sleeps in the kernel until the lock is free, with an interval timer (SIGALRM) to end the
  wait at the busy timeout: it is woken the moment the holder lets go.
- Other threads (the worker's job threads and its completer, runserver's requests) and a main thread
  whose SIGALRM or interval timer someone else uses try again every 0.2 to 2 ms.

The sleepers therefore go first, and the web's requests, whose clients are waiting, take turns within
a fraction of a millisecond; the worker's job threads take the gaps between them (the worker already
runs at a lower CPU priority: ``Nice=`` in deploy/shop-worker@.service). After the busy timeout a
writer goes on without the file lock and SQLite's own lock decides, so a transaction left open
somewhere still ends in SQLite's "database is locked" rather than an endless wait.
"""

import fcntl
import os
import signal
import threading
import time

from django.db.backends.sqlite3 import base

READS = ("SELECT", "PRAGMA", "SAVEPOINT", "RELEASE", "EXPLAIN")


class CursorWrapper(base.SQLiteCursorWrapper):
    wrapper: "DatabaseWrapper"

    def execute(self, query, params=None):
        if self.wrapper.in_transaction() or query.lstrip()[:9].upper().startswith(READS):
            return super().execute(query, params)
        self.wrapper._take_writer_lock()
        try:
            return super().execute(query, params)
        finally:
            self.wrapper._release_writer_lock()

    def executemany(self, query, param_list):
        if self.wrapper.in_transaction():
            return super().executemany(query, param_list)
        self.wrapper._take_writer_lock()
        try:
            return super().executemany(query, param_list)
        finally:
            self.wrapper._release_writer_lock()


class DatabaseWrapper(base.DatabaseWrapper):
    _writer_fd: int | None = None
    _writer_held = False

    def get_new_connection(self, conn_params):
        conn = super().get_new_connection(conn_params)
        if not self.is_in_memory_db():
            path = f"{self.settings_dict['NAME']}.writer"
            self._writer_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return conn

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=CursorWrapper)
        cursor.wrapper = self
        return cursor

    def in_transaction(self) -> bool:
        return self._writer_held or (self.connection is not None and self.connection.in_transaction)

    def _start_transaction_under_autocommit(self):
        self._take_writer_lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_writer_lock()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None

    def _take_writer_lock(self) -> None:
        if self._writer_fd is None or self._writer_held:
            return
        try:  # free (the common case): no timer to arm
            fcntl.flock(self._writer_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._writer_held = True
            return
        timeout = float(self.settings_dict["OPTIONS"].get("timeout", 5))
        if _can_sleep_for_the_lock():
            self._writer_held = _sleep_for_lock(self._writer_fd, timeout)
        else:
            self._writer_held = _poll_for_lock(self._writer_fd, timeout)
        # Not held after the timeout: SQLite's own lock and busy timeout decide from here.

    def _release_writer_lock(self) -> None:
        if self._writer_held:
            self._writer_held = False
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)


class _TimedOut(Exception):
    pass


_sleeping = False  # the main thread is in flock() under our timer: only then may the alarm end it


def _on_alarm(signum, frame) -> None:
    if _sleeping:
        raise _TimedOut


def _can_sleep_for_the_lock() -> bool:
    """Only the main thread receives signals; and only if SIGALRM and the real interval timer are ours
    to use (the handler is installed on the first call, when nothing else handles the signal)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGALRM)
    if handler is not _on_alarm:
        if handler is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGALRM, _on_alarm)
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _sleep_for_lock(fd: int, timeout: float) -> bool:
    """Block in flock() until the lock is ours (True) or ``timeout`` seconds passed (False)."""
    global _sleeping
    try:
        _sleeping = True
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # interrupted only by the alarm's exception
        finally:
            _sleeping = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        return True
    except _TimedOut:
        # Either flock() was waiting, or the alarm came as it returned: give back what may be ours.
        _sleeping = False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


def _poll_for_lock(fd: int, timeout: float) -> bool:
    """Try the lock every 0.2 to 2 ms until it is ours (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
        else:
            return True
