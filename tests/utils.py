"""Helpers for tests that start real processes against the test database."""

import glob
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def database_url() -> str:
    """The URL of the test database the current test runs against (for child processes)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    host = s["HOST"] or "127.0.0.1"
    port = s["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a `manage.py` child process that shares this test's database."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    env.update(
        DATABASE_URL=database_url(),
        PYTHONPATH=os.pathsep.join(filter(None, [str(BASE_DIR), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage_py() -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py")]


def wait_for(
    condition: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, message: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message or condition}")
        time.sleep(interval)


def checkout_token(client) -> str:
    """The one-time token of a checkout form freshly shown to ``client`` (whose cart is not empty)."""
    import re

    page = client.get("/checkout/")
    assert page.status_code == 200, page.status_code
    return re.search(rb'name="checkout_token" value="([^"]+)"', page.content)[1].decode()


LIBFAKETIME = next(
    (
        p
        for p in glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
        + glob.glob("/usr/lib/faketime/libfaketime.so.1")
    ),
    None,
)


def faketime(offset: str) -> dict[str, str]:
    """Environment running a worker with its host's clock off by ``offset`` (libfaketime, preloaded so
    that the worker keeps its pid); monotonic time is left alone, as a skewed host's is (and Python's
    timed waits hang on a faked one)."""
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
