"""Debounce by key: ``enqueue(..., unique_key=k, on_conflict="replace", max_wait=...)`` updates the job
waiting under the key instead of adding one, never pushing it past ``max_wait`` from its first enqueue."""

import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import engine
from jobs.api import enqueue
from jobs.models import Job, JobStatus
from tests.utils import manage_py, subprocess_env, wait_for

pytestmark = pytest.mark.django_db


def test_replace_updates_the_waiting_jobs_payload_and_pushes_its_run_at():
    first = enqueue("test.record", {"key": "v1"}, unique_key="sync:7", on_conflict="replace", delay=10)
    later = timezone.now() + timedelta(seconds=60)
    again = enqueue("test.record", {"key": "v2"}, unique_key="sync:7", on_conflict="replace", run_at=later)
    assert again.id == first.id
    job = Job.objects.get(unique_key="sync:7")
    assert (job.payload, job.run_at, job.status) == ({"key": "v2"}, later, JobStatus.PENDING)
    assert (again.payload, again.run_at) == ({"key": "v2"}, later)
    assert job.created_at == first.created_at


def test_replace_never_pushes_run_at_past_max_wait_from_the_first_enqueue():
    debounce = {"unique_key": "k", "on_conflict": "replace", "max_wait": timedelta(seconds=30)}
    first = enqueue("test.record", {"key": "v1"}, delay=5, **debounce)
    requested = timezone.now() + timedelta(seconds=20)  # within the cap: the requested time stands
    enqueue("test.record", {"key": "v2"}, run_at=requested, **debounce)
    assert Job.objects.get(id=first.id).run_at == requested
    enqueue("test.record", {"key": "v4"}, delay=3600, **debounce)
    job = Job.objects.get(id=first.id)
    assert job.run_at == first.created_at + timedelta(seconds=30)
    assert job.payload == {"key": "v4"} and Job.objects.count() == 1


def test_keep_is_the_default_and_leaves_the_waiting_job_unchanged():
    first = enqueue("test.record", {"key": "v1"}, unique_key="k", delay=10)
    for options in ({}, {"on_conflict": "keep"}):
        again = enqueue("test.record", {"key": "v2"}, unique_key="k", delay=60, **options)
        assert again.id == first.id
        job = Job.objects.get(id=first.id)
        assert (job.payload, job.run_at) == ({"key": "v1"}, first.run_at)


def test_replace_updates_a_job_still_blocked_on_its_parents_which_keeps_waiting():
    parent = enqueue("test.record", {"key": "parent"}, delay=3600)
    first = enqueue("test.record", {"key": "v1"}, unique_key="k", on_conflict="replace", depends_on=[parent])
    again = enqueue("test.record", {"key": "v2"}, unique_key="k", on_conflict="replace", depends_on=[parent])
    job = Job.objects.get(id=first.id)
    assert again.id == first.id and Job.objects.count() == 2
    assert (job.status, job.waiting_on, job.payload) == (JobStatus.BLOCKED, 1, {"key": "v2"})


def test_replace_leaves_a_running_job_alone_and_returns_it():
    first = enqueue("test.record", {"key": "v1"}, unique_key="k", on_conflict="replace")
    (claimed,) = engine.claim("w", 1)
    assert claimed.id == first.id
    again = enqueue("test.record", {"key": "v2"}, unique_key="k", on_conflict="replace", delay=60)
    assert again.id == first.id and again.status == JobStatus.RUNNING
    job = Job.objects.get(id=first.id)
    assert job.payload == {"key": "v1"} and Job.objects.count() == 1


def test_replace_after_the_key_was_freed_enqueues_a_new_job():
    first = enqueue("test.record", {"key": "v1"}, unique_key="k", on_conflict="replace")
    engine.cancel(first.id)
    again = enqueue("test.record", {"key": "v2"}, unique_key="k", on_conflict="replace")
    assert again.id != first.id and again.payload == {"key": "v2"}


def test_bad_debounce_options_are_value_errors_and_store_nothing():
    with pytest.raises(ValueError, match="on_conflict must be 'keep' or 'replace', not 'update'"):
        enqueue("test.record", unique_key="k", on_conflict="update")
    with pytest.raises(ValueError, match="needs a unique_key"):
        enqueue("test.record", on_conflict="replace")
    with pytest.raises(ValueError, match="max_wait bounds a debounce"):
        enqueue("test.record", unique_key="k", max_wait=30)
    assert not Job.objects.exists()


# Each process waits for the go file, then debounces the same key ROUNDS times; it prints the ids.
ROUNDS = 15
SCRIPT = """
import pathlib, time
from jobs.api import enqueue
ready, go = pathlib.Path({ready!r}), pathlib.Path({go!r})
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    assert time.monotonic() < deadline, "no go file"
    time.sleep(0.01)
ids = set()
for i in range({rounds}):
    job = enqueue("test.record", {{"key": "{name}-%d" % i}}, unique_key="debounced", on_conflict="replace",
                  delay=3600, max_wait=30)
    ids.add(job.id)
print("IDS", sorted(ids))
"""


@pytest.mark.django_db(transaction=True)
def test_debounce_under_concurrent_enqueues_from_several_processes_keeps_one_job_within_max_wait(tmp_path):
    go = tmp_path / "go"
    procs = []
    try:
        for n in range(4):
            ready = tmp_path / f"ready-{n}"
            code = SCRIPT.format(ready=str(ready), go=str(go), rounds=ROUNDS, name=f"p{n}")
            procs.append(
                subprocess.Popen(
                    [*manage_py(), "shell", "-c", code],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=subprocess_env(),
                    text=True,
                )
            )
        wait_for(
            lambda: all((tmp_path / f"ready-{n}").exists() for n in range(4)), timeout=60, message="all ready"
        )
        go.touch()
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    job = Job.objects.get()  # exactly one job, whoever enqueued first
    assert all(f"IDS [{job.id}]" in out for out in outputs), outputs
    assert job.status == JobStatus.PENDING and job.unique_key == "debounced"
    # Every later enqueue asked for an hour; max_wait holds it to 30 s after the first enqueue.
    assert job.run_at == job.created_at + timedelta(seconds=30)
    assert job.payload["key"] in {f"p{n}-{i}" for n in range(4) for i in range(ROUNDS)}


def test_replace_leaves_another_types_job_holding_the_key_alone():
    other = enqueue("test.noop", {"key": "v1"}, unique_key="k", delay=10)
    again = enqueue("test.record", {"key": "v2"}, unique_key="k", on_conflict="replace", delay=60)
    assert again.id == other.id
    job = Job.objects.get(id=other.id)
    assert (job.type, job.payload, job.run_at) == ("test.noop", {"key": "v1"}, other.run_at)
