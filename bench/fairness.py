"""The fairness scenario (issue 21): does one flooded key starve the others? Run by bench/run.py.

10,000 jobs of one key ("big") and 100 of each of 9 others, enqueued together (the flood first, as it
arrives in the incident), 1 ms each, drained by one `runworker --burst --concurrency 4`. Reported:
the small keys' time, from the first claim to the last small-key job's finish (the jobs' own rows),
with fair share on, with it off (JOBS_FAIR_SHARE=false: plain claim order across keys), and on an empty
queue (only the small keys' 900 jobs). Medians of 3, runs alternating.
"""

import statistics
import time

SMALL_KEYS = [f"small-{i}" for i in range(1, 10)]


def _run(start_workers, observe: dict, db: str, mode: str) -> float:
    from django.db.models import Max, Min

    from jobs.api import enqueue_many
    from jobs.models import FairShareKey, Job, JobStatus

    Job.objects.all().delete()
    FairShareKey.objects.all().delete()
    if mode != "empty":
        for _ in range(10):
            enqueue_many("bench.fair", [{"key": "big"}] * 1000)
    for key in SMALL_KEYS:
        enqueue_many("bench.fair", [{"key": key}] * 100)
    observe.clear()
    if mode == "off":
        observe["JOBS_FAIR_SHARE"] = "false"
    try:
        (proc,) = start_workers(db, 1, "--burst", "--concurrency", "4")
        proc.wait(900)
    finally:
        observe.clear()
    total = 900 if mode == "empty" else 10_900
    done = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    if done != total:
        raise SystemExit(f"fairness: only {done} of {total} jobs succeeded ({mode})")
    first = Job.objects.aggregate(a=Min("started_at"))["a"]
    last_small = Job.objects.filter(fair_key__in=SMALL_KEYS).aggregate(b=Max("finished_at"))["b"]
    return (last_small - first).total_seconds()


def scenario_fairness(start_workers, observe: dict, db: str) -> str:
    runs: dict[str, list[float]] = {"on": [], "off": [], "empty": []}
    started = time.perf_counter()
    for _ in range(3):
        for mode in runs:
            runs[mode].append(_run(start_workers, observe, db, mode))
    on, off, empty = (statistics.median(runs[m]) for m in ("on", "off", "empty"))
    return (
        f"fairness {db:8s} 9 small keys x 100 beside 10,000 of one key, 1 ms jobs, 1 process x 4 threads:"
        f" small keys done in {on:6.2f} s fair share on ({on / empty:4.2f}x of empty),"
        f" {off:6.2f} s off ({off / empty:5.2f}x), {empty:6.2f} s on an empty queue"
        f"   (medians of 3; {time.perf_counter() - started:.0f} s in all)"
    )
