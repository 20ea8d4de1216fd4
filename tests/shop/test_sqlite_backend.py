"""The SQLite backend's writer lock (shop/backends/sqlite3): write transactions and autocommit writes
hold an OS file lock beside the database while they write, and give it back however they end."""

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.db import IntegrityError, connection, transaction

from shop.models import Product
from tests.factories import ProductFactory
from tests.utils import BASE_DIR, subprocess_env, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the writer lock is SQLite's"),
]


def lock_path() -> str:
    return f"{connection.settings_dict['NAME']}.writer"


def writer_lock_is_free() -> bool:
    """Whether another open file description could take the lock now (and it gives it back)."""
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def test_a_write_transaction_holds_the_lock_until_it_commits():
    product = ProductFactory(stock=5)
    assert writer_lock_is_free()
    with transaction.atomic():
        Product.objects.filter(pk=product.pk).update(stock=4)
        assert not writer_lock_is_free()
    assert writer_lock_is_free()
    product.refresh_from_db()
    assert product.stock == 4


def test_a_rolled_back_transaction_gives_the_lock_back():
    product = ProductFactory(sku="ONE")
    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(sku="ONE")
    assert writer_lock_is_free()
    assert Product.objects.get() == product


def test_a_second_writer_waits_for_the_first_and_both_land():
    product = ProductFactory(stock=10)
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        try:
            with transaction.atomic():
                Product.objects.filter(pk=product.pk).update(stock=9)
                inside.set()
                release.wait(10)
                order.append("first committed")
        finally:
            connection.close()

    def second():
        try:
            inside.wait(10)
            with transaction.atomic():
                order.append("second began")
                Product.objects.filter(pk=product.pk).update(stock=8)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    wait_for(inside.is_set, message="first transaction open")
    time.sleep(0.2)  # give the second writer time to reach the lock; it must still be waiting
    assert order == []
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first committed", "second began"]
    product.refresh_from_db()
    assert product.stock == 8


def test_a_killed_holder_releases_the_lock():
    ProductFactory(sku="HELD", stock=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import django, time; django.setup()\n"
            "from django.db import transaction\n"
            "from shop.models import Product\n"
            "with transaction.atomic():\n"
            "    Product.objects.filter(sku='HELD').update(stock=0)\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        cwd=BASE_DIR,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert not writer_lock_is_free()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        wait_for(writer_lock_is_free, timeout=5, message="the kernel released the dead holder's lock")
        Product.objects.filter(sku="HELD").update(stock=7)  # SQLite rolled the dead one back
        assert Product.objects.get(sku="HELD").stock == 7
    finally:
        holder.kill()
        holder.wait(10)


@contextlib.contextmanager
def lock_held_elsewhere(timeout: float | None = None):
    """The writer lock held by another open file description (as another process would hold it), with
    the busy timeout set to ``timeout`` seconds meanwhile. Yields a function that gives the lock back
    before the end."""
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("timeout")
    if timeout is not None:
        options["timeout"] = timeout
    connection.close()  # the next query opens a connection under these options
    held = [fd]

    def give_back() -> None:
        if held:
            fcntl.flock(held.pop(), fcntl.LOCK_UN)
            os.close(fd)

    try:
        yield give_back
    finally:
        options["timeout"] = saved
        connection.close()
        give_back()


def test_a_writer_that_cannot_get_the_lock_goes_on_after_the_busy_timeout():
    """A lock held by something that is no SQLite transaction: after the busy timeout the writer
    proceeds under SQLite's own lock instead of waiting for ever."""
    product = ProductFactory(stock=3)
    with lock_held_elsewhere(timeout=0.5):
        started = time.monotonic()
        with transaction.atomic():
            Product.objects.filter(pk=product.pk).update(stock=2)
        waited = time.monotonic() - started
    assert waited >= 0.5
    product.refresh_from_db()
    assert product.stock == 2


def test_another_threads_writer_polls_and_goes_on_after_the_busy_timeout():
    """Only the main thread sleeps under an alarm: a job thread or a runserver thread polls, and its
    deadline holds as well."""
    product = ProductFactory(stock=3)
    outcome = {}

    def write():
        try:
            started = time.monotonic()
            with transaction.atomic():
                Product.objects.filter(pk=product.pk).update(stock=2)
            outcome["waited"] = time.monotonic() - started
        finally:
            connection.close()

    with lock_held_elsewhere(timeout=0.5):
        thread = threading.Thread(target=write)
        thread.start()
        thread.join(10)
    assert outcome["waited"] >= 0.5
    product.refresh_from_db()
    assert product.stock == 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_main_thread_sleeps_until_the_holder_lets_go_and_leaves_no_alarm_behind():
    """The main thread's writer waits in flock() (not a polling loop): it is woken by the release, and
    after both a wait that got the lock and one that timed out no interval timer is left running."""
    product = ProductFactory(stock=3)
    released = threading.Event()
    with lock_held_elsewhere() as give_back:

        def release_when_waiting():
            # /proc shows the main thread blocked in the kernel's file lock wait.
            wait_for(main_thread_waits_in_flock, message="the main thread asleep in flock()")
            released.set()
            give_back()

        helper = threading.Thread(target=release_when_waiting)
        helper.start()
        try:
            Product.objects.filter(pk=product.pk).update(stock=2)
        finally:
            helper.join(30)
    assert released.is_set()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    product.refresh_from_db()
    assert product.stock == 2

    with lock_held_elsewhere(timeout=0.3):
        Product.objects.filter(pk=product.pk).update(stock=1)  # goes on under SQLite's own lock
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    product.refresh_from_db()
    assert product.stock == 1


def main_thread_waits_in_flock() -> bool:
    wchan = f"/proc/{os.getpid()}/task/{threading.main_thread().native_id}/wchan"
    with open(wchan) as f:
        return "lock_inode_wait" in f.read()  # flock()'s wait; a polling sleep is hrtimer_nanosleep


def test_a_main_thread_whose_sigalrm_is_taken_polls_and_leaves_the_handler_alone():
    product = ProductFactory(stock=3)
    calls = []

    def mine(*args):
        calls.append(args)

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        with lock_held_elsewhere(timeout=0.3):
            started = time.monotonic()
            Product.objects.filter(pk=product.pk).update(stock=2)
            waited = time.monotonic() - started
            assert signal.getsignal(signal.SIGALRM) is mine and calls == []
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert waited >= 0.3
    product.refresh_from_db()
    assert product.stock == 2
