"""The benchmark suite: `make bench` (or `python bench/run.py [--db sqlite,postgres] [scenario ...]`).

Scenarios (each prints one line per database):
  enqueue  jobs/s enqueueing one job per transaction, and with enqueue_many in batches of 1,000
  drain    N no-op jobs drained by 1 and by 2 `runworker` processes
  latency  enqueue commit -> handler start, p50/p95/p99 over 1,000 jobs at a steady rate, idle worker
  depth    drain rate with 1,000,000 finished and 100,000 pending jobs in the table, vs an empty table
  orders   POST /api/orders, 8 concurrent clients for 30 s against gunicorn with a worker running
  orders32 the same with 32 concurrent clients (where the order path saturates)
  observability  drain and orders with tracing (to a local OTLP sink) and JSON logs at INFO, beside off
  fairness  9 small keys (100 jobs each) beside one key of 10,000: when the small keys finish with fair
           share on and off, beside their time on an empty queue (bench/fairness.py)

Run only when named (~5 minutes on both databases):
  io       2,000 jobs each waiting 50 ms on a local HTTP server, drained by one worker with
           --concurrency 4, 16, 64, and at 64 with an `async def` handler (bench/io_bound.py)

Scale scenarios (PostgreSQL only; run when named or with --scale, ~40 minutes together):
  scale_depth  enqueue and drain rates with 10,000,000 finished and 1,000,000 pending jobs, and the drain
               rate while `jobs prune` deletes 9,000,000 of the finished ones
  backlog      enqueue commit -> handler start of high-priority jobs behind 1,000,000 low-priority ones
  pgbouncer    8 worker processes x 16 threads through PgBouncer with 10 server connections

Every scenario starts from a fresh database: PostgreSQL `bench_shop` on 127.0.0.1 (BENCH_PG_DB names
another), SQLite in /tmp (BENCH_SQLITE_PATH names another file); the orders scenarios' gunicorn listens
on 127.0.0.1:8765 (BENCH_WEB_PORT). Two sittings on one machine set all three apart.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Other names (and another port for the orders scenarios' gunicorn) keep two sittings apart.
SQLITE_PATH = os.environ.get("BENCH_SQLITE_PATH", "/tmp/bench_shop.sqlite3")
PG_DB = os.environ.get("BENCH_PG_DB", "bench_shop")
WEB_PORT = int(os.environ.get("BENCH_WEB_PORT", "8765"))
URLS = {"sqlite": f"sqlite:///{SQLITE_PATH}", "postgres": f"postgres://postgres@127.0.0.1:5432/{PG_DB}"}
SCENARIOS = ["enqueue", "drain", "latency", "depth", "orders", "orders32", "observability", "fairness"]
# Tens of millions of rows and PgBouncer: PostgreSQL only, and only when named or with --scale.
SCALE_SCENARIOS = ["scale_depth", "backlog", "pgbouncer"]
# Minutes of waiting on a slow server: only when named.
NAMED_SCENARIOS = ["io"]
WORKER_NICE = 10  # as Nice= in deploy/shop-worker@.service
# Extra environment for the processes a scenario starts (the observability scenario turns it on and off).
OBSERVE: dict[str, str] = {}


def env_for(db: str, **extra) -> dict:
    env = dict(
        os.environ, DATABASE_URL=URLS[db], DJANGO_SETTINGS_MODULE="bench.settings", PYTHONPATH=str(ROOT)
    )
    env.update(OBSERVE)
    env.update(extra)
    return env


def reset(db: str) -> None:
    if db == "postgres":
        for sql in (f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)", f"CREATE DATABASE {PG_DB}"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql, "postgres"], check=True)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(SQLITE_PATH + suffix).unlink(missing_ok=True)
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env_for(db), check=True)


def quiesce(postgres: bool) -> None:
    """Start each scenario on a quiet disk: a previous one (the depth scenario writes 1.1M rows) leaves
    PostgreSQL a checkpoint's worth of dirty pages to flush, which would otherwise land in the next
    scenario's figures, whichever database it measures."""
    if postgres:
        psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc"]
        subprocess.run([*psql, "CHECKPOINT", "postgres"], check=True)
    os.sync()


def start_workers(db: str, count: int, *args: str, nice: int = 0) -> list[subprocess.Popen]:
    cmd = [PY, "manage.py", "runworker", "--queues", "bench", *args]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    return [
        subprocess.Popen(cmd, cwd=ROOT, env=env_for(db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


# -- scenarios, run in a child process with Django set up on one database -------------------------


def child_setup() -> None:
    import django

    django.setup()


def scenario_enqueue(db: str, n: int) -> str:
    from django.db import connection

    from jobs.api import enqueue, enqueue_many
    from jobs.models import Job

    singles, bulks = [], []
    for _ in range(3):
        Job.objects.all().delete()
        t = time.perf_counter()
        for i in range(2000):
            enqueue("bench.noop", {"i": i})
        singles.append(2000 / (time.perf_counter() - t))
        Job.objects.all().delete()
        t = time.perf_counter()
        for b in range(10):
            enqueue_many("bench.noop", [{"i": b * 1000 + i} for i in range(1000)])
        bulks.append(10_000 / (time.perf_counter() - t))
    connection.close()
    return (
        f"enqueue  {db:8s} one per transaction {statistics.median(singles):8.0f} jobs/s   "
        f"enqueue_many(1000) {statistics.median(bulks):8.0f} jobs/s"
    )


def _drain(db: str, n: int, workers: int, concurrency: int, vacuum: bool = False) -> tuple[float, float]:
    """(wall-clock jobs/s from starting the processes to their exit, jobs/s first claim to last completion)

    ``vacuum``: on PostgreSQL, VACUUM the database after deleting the last run's jobs, so that every run
    starts from the same table and autovacuum, woken by that delete, does not land in some runs only."""
    from django.db import connection
    from django.db.models import Max, Min

    from jobs.api import enqueue_many
    from jobs.models import Job, JobStatus

    Job.objects.all().delete()
    if vacuum and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    for b in range(0, n, 1000):
        enqueue_many("bench.noop", [{"i": i} for i in range(b, min(n, b + 1000))])
    t = time.perf_counter()
    procs = start_workers(db, workers, "--burst", "--concurrency", str(concurrency))
    for p in procs:
        p.wait(900)
    wall = time.perf_counter() - t
    done = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    if done != n:
        raise SystemExit(f"drain: only {done} of {n} jobs succeeded")
    span = Job.objects.aggregate(a=Min("started_at"), b=Max("finished_at"))
    return n / wall, n / (span["b"] - span["a"]).total_seconds()


def scenario_drain(db: str, n: int) -> str:
    parts = []
    for workers in (1, 2):
        wall, inner = _drain(db, n, workers, 4)
        parts.append(
            f"{workers} process(es) {wall:7.0f} jobs/s wall ({inner:7.0f} first claim to last completion)"
        )
    return f"drain    {db:8s} N={n}  " + "   ".join(parts)


def scenario_latency(db: str, n: int) -> str:
    from jobs.api import enqueue
    from jobs.models import Job, JobStatus, WorkerProcess

    procs = start_workers(db, 1, "--concurrency", "4")
    try:
        deadline = time.monotonic() + 30
        while not WorkerProcess.objects.exists():
            if time.monotonic() > deadline:
                raise SystemExit("latency: worker did not start")
            time.sleep(0.05)
        time.sleep(1)  # let the worker settle into its idle wait
        committed = {}
        for i in range(1000):
            job = enqueue("bench.latency", {"i": i})  # autocommit: committed when it returns
            committed[job.id] = time.time()
            time.sleep(0.005)
        while Job.objects.filter(type="bench.latency").exclude(status=JobStatus.SUCCEEDED).exists():
            if time.monotonic() > deadline + 120:
                raise SystemExit("latency: jobs did not finish")
            time.sleep(0.1)
        lat = sorted(
            (result - committed[job_id]) * 1000
            for job_id, result in Job.objects.filter(type="bench.latency").values_list("id", "result")
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))]

    return (
        f"latency  {db:8s} 1000 jobs at 200/s   p50 {pct(50):6.1f} ms   p95 {pct(95):6.1f} ms"
        f"   p99 {pct(99):6.1f} ms"
    )


def _fill_sql(
    vendor: str,
    status: str,
    *,
    job_type: str = "bench.noop",
    payload: str = "{}",
    priority: int = 0,
    days_ago: int = 0,
) -> str:
    """One INSERT ... SELECT writing %s jobs on the database side; finished ones finished (and all
    created) ``days_ago`` days ago."""
    if vendor == "postgresql":
        series, now = "generate_series(1, %s)", f"now() - interval '{days_ago} days'"
    else:
        series = (
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) SELECT i FROM s)"
        )
        now = f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-{days_ago} days')"
    finished, attempts = (now, 1) if status == "succeeded" else ("NULL", 0)
    return (
        "INSERT INTO jobs_job (type, queue, payload, payload_version, status, status_reason, priority,"
        " run_at, attempts, max_attempts, errors, created_at, finished_at, waiting_on, cancel_requested,"
        " tags, meta, snoozes)"
        f" SELECT '{job_type}', 'bench', '{payload}', 1, '{status}', '', {priority}, {now}, {attempts}, 3,"
        f" '[]', {now}, {finished}, 0, false, '[]', '{{}}', 0 FROM {series} AS g"
    )


def _settle() -> None:
    """The steady state of a busy table after a bulk fill: statistics known, the write flushed out of
    the WAL."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE jobs_job")
            cursor.execute("CHECKPOINT")
        else:
            cursor.execute("ANALYZE jobs_job")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _drain_pending(db: str, n: int) -> tuple[float, float]:
    """Drain n of the pending jobs already in the table with 2 `runworker --concurrency 4` processes:
    (wall jobs/s, jobs/s from the first claim to the last completion)."""
    from django.db.models import Max, Min
    from django.utils import timezone

    from jobs.models import Job, JobStatus

    since = timezone.now()
    t = time.perf_counter()
    procs = start_workers(db, 2, "--concurrency", "4", "--max-jobs", str(n // 2))
    for p in procs:
        p.wait(900)
    wall = time.perf_counter() - t
    done = Job.objects.filter(status=JobStatus.SUCCEEDED, started_at__gte=since)  # not the filler
    span = done.aggregate(a=Min("started_at"), b=Max("finished_at"))
    return n / wall, done.count() / (span["b"] - span["a"]).total_seconds()


def _median(runs, i: int = 1) -> float:
    return statistics.median(r[i] for r in runs)


def scenario_depth(db: str, n: int) -> str:
    """Median of 3 drains of n jobs each way: on an empty table, then (one after another) from the
    100,000 pending jobs of a table that also holds 1,000,000 finished ones."""
    from django.db import connection

    from jobs.models import Job

    n = min(n, 10_000)
    empty = [_drain(db, n, 2, 4) for _ in range(3)]
    Job.objects.all().delete()
    # 1,000,000 finished and 100,000 pending rows, written by the database itself
    with connection.cursor() as cursor:
        cursor.execute(_fill_sql(connection.vendor, "succeeded"), [1_000_000])
        cursor.execute(_fill_sql(connection.vendor, "pending"), [100_000])
    _settle()
    deep = [_drain_pending(db, n) for _ in range(3)]
    return (
        f"depth    {db:8s} 2 processes, 1M finished + 100k pending: {_median(deep):7.0f} jobs/s vs"
        f" {_median(empty):7.0f} on an empty table = {_median(deep) / _median(empty):4.2f}x"
        f"   (wall {_median(deep, 0):7.0f} vs {_median(empty, 0):7.0f}; medians of 3)"
    )


def _enqueue_rates() -> tuple[float, float]:
    """Medians of 3: jobs/s enqueueing 2,000 jobs one per transaction, and 10,000 with enqueue_many in
    batches of 1,000. The jobs stay in the table (pending)."""
    from jobs.api import enqueue, enqueue_many

    singles, bulks = [], []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(2000):
            enqueue("bench.noop", {"i": i})
        singles.append(2000 / (time.perf_counter() - t))
        t = time.perf_counter()
        for b in range(10):
            enqueue_many("bench.noop", [{"i": b * 1000 + i} for i in range(1000)])
        bulks.append(10_000 / (time.perf_counter() - t))
    return statistics.median(singles), statistics.median(bulks)


def scenario_scale_depth(db: str, n: int) -> str:
    """Issue 20's depth: enqueue and drain rates on an empty table, then with 10,000,000 finished jobs
    (9,000,000 of them 30 days old) and 1,000,000 pending; then the drain rate while `jobs prune
    --older-than 7d` deletes the 9,000,000 in its batches (a drain every 20 s until it is done). Prints
    each figure as it comes: the whole takes ~30 minutes."""
    from django.db import connection

    from jobs.models import Job, JobStatus

    def say(line: str) -> None:
        print(f"scale_depth {db} {line}", flush=True)

    empty_enqueue = _enqueue_rates()
    empty = [_drain(db, n, 2, 4) for _ in range(3)]
    say(
        f"empty table: enqueue {empty_enqueue[0]:.0f} / enqueue_many {empty_enqueue[1]:.0f} jobs/s,"
        f" drain {_median(empty):.0f} jobs/s (wall {_median(empty, 0):.0f})"
    )
    Job.objects.all().delete()
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_fill_sql(connection.vendor, "succeeded", days_ago=30), [9_000_000])
        cursor.execute(_fill_sql(connection.vendor, "succeeded"), [1_000_000])
        cursor.execute(_fill_sql(connection.vendor, "pending"), [1_000_000])
    _settle()
    say(f"fill 11M rows + VACUUM ANALYZE + CHECKPOINT {time.perf_counter() - t:.0f} s")
    deep = [_drain_pending(db, n) for _ in range(3)]
    deep_enqueue = _enqueue_rates()
    say(
        f"10M finished + 1M pending: drain {_median(deep):.0f} vs {_median(empty):.0f} jobs/s empty ="
        f" {_median(deep) / _median(empty):.2f}x (wall {_median(deep, 0):.0f} vs {_median(empty, 0):.0f})"
    )
    say(
        f"10M finished + 1M pending: enqueue one per transaction {deep_enqueue[0]:.0f} vs"
        f" {empty_enqueue[0]:.0f} jobs/s empty = {deep_enqueue[0] / empty_enqueue[0]:.2f}x; enqueue_many"
        f" {deep_enqueue[1]:.0f} vs {empty_enqueue[1]:.0f} = {deep_enqueue[1] / empty_enqueue[1]:.2f}x"
    )
    # The prune beside a drain every 20 s; a drain counts if it ended before the prune did.
    t = time.perf_counter()
    prune = subprocess.Popen(
        [PY, "manage.py", "jobs", "prune", "--older-than", "7d"],
        cwd=ROOT,
        env=env_for(db),
        stdout=subprocess.PIPE,
        text=True,
    )
    during = []
    while prune.poll() is None and Job.objects.filter(status=JobStatus.PENDING).count() >= n:
        run = _drain_pending(db, n)
        if prune.poll() is None or not during:
            during.append(run)
            say(f"drain during the prune at {time.perf_counter() - t:.0f} s: {run[1]:.0f} jobs/s")
        deadline = time.monotonic() + 20
        while prune.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    pruned = prune.communicate()[0].strip()
    prune_s = time.perf_counter() - t
    finished = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    rates = sorted(r[1] for r in during)
    say(
        f"prune: {pruned} in {prune_s:.0f} s ({9_000_000 / prune_s:.0f} rows/s), {finished} succeeded left;"
        f" drain meanwhile median {_median(during):.0f} jobs/s over {len(during)} drains (min {rates[0]:.0f},"
        f" max {rates[-1]:.0f}) = {_median(during) / _median(deep):.2f}x of without"
    )
    if Job.objects.filter(status=JobStatus.PENDING).count() < 3 * n:
        return f"scale_depth {db} done (too few pending jobs left for the drains after the prune)"
    after = [_drain_pending(db, n) for _ in range(3)]
    ratio = _median(after) / _median(deep)
    return f"scale_depth {db} after the prune: drain {_median(after):.0f} jobs/s = {ratio:.2f}x of before"


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def _wait_for_worker(seconds: float = 30) -> None:
    from jobs.models import WorkerProcess

    deadline = time.monotonic() + seconds
    while not WorkerProcess.objects.exists():
        if time.monotonic() > deadline:
            raise SystemExit("worker did not start")
        time.sleep(0.05)


def scenario_backlog(db: str, n: int) -> str:
    """1,000,000 pending low-priority jobs of 2 ms each drained by 2 `runworker --concurrency 4`
    processes; 200 high-priority jobs enqueued one at a time, 50 ms apart, into that: enqueue commit ->
    handler start of each."""
    from django.db import connection

    from jobs.api import enqueue
    from jobs.models import Job, JobStatus, Priority

    with connection.cursor() as cursor:
        sql = _fill_sql(
            connection.vendor, "pending", job_type="bench.nap", payload='{"ms": 2}', priority=Priority.LOW
        )
        cursor.execute(sql, [1_000_000])
    _settle()
    procs = start_workers(db, 2, "--concurrency", "4")
    try:
        _wait_for_worker()
        time.sleep(3)  # past the first claims: the adaptive prefetch has grown for 2 ms jobs
        committed = {}
        start = time.perf_counter()
        low_before = Job.objects.filter(type="bench.nap", status=JobStatus.SUCCEEDED).count()
        for i in range(200):
            job = enqueue("bench.latency", {"i": i}, priority=Priority.HIGH)
            committed[job.id] = time.time()
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        high = Job.objects.filter(type="bench.latency")
        while high.exclude(status=JobStatus.SUCCEEDED).exists():
            if time.monotonic() > deadline:
                raise SystemExit("backlog: high-priority jobs did not finish")
            time.sleep(0.1)
        low_rate = (Job.objects.filter(type="bench.nap", status=JobStatus.SUCCEEDED).count() - low_before) / (
            time.perf_counter() - start
        )
        lat = [(result - committed[pk]) * 1000 for pk, result in high.values_list("id", "result")]
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
    return (
        f"backlog  {db:8s} 200 high-priority jobs behind 1M low-priority (2 ms) ones:"
        f"   p50 {_pct(lat, 50):6.1f} ms"
        f"   p95 {_pct(lat, 95):6.1f} ms   p99 {_pct(lat, 99):6.1f} ms   max {max(lat):6.1f} ms"
        f"   (low-priority drain meanwhile {low_rate:.0f} jobs/s)"
    )


def scenario_pgbouncer(db: str, n: int) -> str:
    """n (at least 50,000) no-op jobs drained by 8 `runworker --burst --concurrency 16` processes through
    PgBouncer in transaction pooling with 10 server connections (PostgreSQL allows 100 here, fewer than
    the workers' ~150 connections). Claims are timed in the workers (bench/timed_worker.py); PgBouncer's
    own counters say how long transactions waited for a server connection."""
    import re
    import tempfile
    import threading

    from django.db import connection
    from django.db.models import Max, Min

    from jobs.api import enqueue_many
    from jobs.models import Job, JobStatus
    from tests.pgbouncer import PgBouncer

    n = max(n, 50_000)  # enough claims past the 8 processes' start-up for a p99
    for b in range(0, n, 1000):
        enqueue_many("bench.noop", [{"i": i} for i in range(b, min(n, b + 1000))])
    bouncer = PgBouncer("127.0.0.1", 5432, "postgres", pool_size=10).start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    peak, watching = [0], threading.Event()

    def watch() -> None:  # server connections to our database, as PostgreSQL counts them
        import psycopg

        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
            while not watching.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [PG_DB])
                peak[0] = max(peak[0], row.fetchone()[0])
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        env = env_for(
            db,
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{bouncer.port}/{PG_DB}",
            DATABASE_POOLER="pgbouncer",
        )
        t = time.perf_counter()
        procs = []
        for k in range(8):
            cmd = [
                PY,
                "-m",
                "bench.timed_worker",
                str(tmp / f"claims-{k}.json"),
                "runworker",
                "--queues",
                "bench",
            ]
            with open(tmp / f"worker-{k}.log", "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*cmd, "--burst", "--concurrency", "16"], cwd=ROOT, env=env, stdout=log, stderr=log
                    )
                )
        codes = [p.wait(900) for p in procs]
        wall = time.perf_counter() - t
        stats = next(row for row in bouncer.show("STATS") if row["database"] == PG_DB)
    finally:
        watching.set()
        watcher.join(5)
        bouncer.remove()
    connection.close()
    logs = "".join((tmp / f"worker-{k}.log").read_text() for k in range(8))
    claims = [s * 1000 for k in range(8) for s in json.loads((tmp / f"claims-{k}.json").read_text())]
    done = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    span = Job.objects.aggregate(a=Min("started_at"), b=Max("finished_at"))
    xacts = max(1, stats["total_xact_count"])
    too_many = len(re.findall("too many (clients|connections)", logs))
    errors = len(re.findall(r"ERROR|Traceback|unavailable", logs))
    return (
        f"pgbouncer {db} 8 processes x 16 threads, pool of 10: {done} of {n} succeeded, exit codes"
        f" {sorted(set(codes))}, {n / wall:.0f} jobs/s wall"
        f" ({n / (span['b'] - span['a']).total_seconds():.0f} first claim to last completion)\n"
        f"  claims {len(claims)}: p50 {_pct(claims, 50):.1f} ms"
        f"   p95 {_pct(claims, 95):.1f} ms   p99 {_pct(claims, 99):.1f} ms   max {max(claims):.1f} ms\n"
        f"  'too many connections' {too_many}, error lines {errors}; server connections to {PG_DB} at most"
        f" {peak[0]} (the bench's own idle one included)\n  PgBouncer: {xacts} transactions, each holding a"
        f" server connection {stats['total_xact_time'] / xacts / 1000:.1f} ms and waiting for one"
        f" {stats['total_wait_time'] / xacts / 1000:.1f} ms on average"
    )


def _catalog() -> list[str]:
    from django.core.management import call_command

    from shop.models import Product

    call_command("load_demo_catalog", verbosity=0)
    Product.objects.update(stock=10_000_000)
    return list(Product.objects.filter(active=True).values_list("sku", flat=True))


def scenario_orders(db: str, n: int, clients: int = 8) -> str:
    rate, p50, p99, errors = _orders(db, _catalog(), clients)
    cpu = ORDERS_CPU
    return (
        f"orders   {db:8s} {clients} clients x 30 s: {rate:6.1f} orders/s"
        f"   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   errors {errors}\n"
        f"  CPU while posting: gunicorn {cpu['web']:.0%} of a core, runworker {cpu['worker']:.0%},"
        f" machine busy {cpu['machine']:.0%} of {os.cpu_count()} cores (every process on it)"
    )


# CPU of the last orders run, in cores (1.0 = one core busy throughout): where the time went.
ORDERS_CPU: dict[str, float] = {}


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process and its children (gunicorn's master and its workers), from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root or int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def scenario_orders32(db: str, n: int) -> str:
    return scenario_orders(db, n, clients=32)


def _orders(db: str, skus: list[str], clients: int = 8) -> tuple[float, float, float, int]:
    """(orders/s, p50 ms, p99 ms, errors) of ``clients`` clients posting orders for 30 s."""
    import threading
    import urllib.error
    import urllib.request

    port = WEB_PORT
    # As deploy/ runs them: web connections kept 60 s (CONN_MAX_AGE in shop.env.example), the worker at
    # a lower CPU priority than the web tier (Nice= in shop-worker@.service).
    web = subprocess.Popen(
        [PY, "-m", "gunicorn", "shop.wsgi", "-b", f"127.0.0.1:{port}", "-w", "3", "--log-level", "warning"],
        cwd=ROOT,
        env=env_for(db, CONN_MAX_AGE="60"),
        stderr=subprocess.DEVNULL if OBSERVE else None,  # the JSON log lines: formatted, not shown
    )
    queues = "email,default,inventory,webhooks,invoices"
    worker = start_workers(db, 1, "--queues", queues, "--concurrency", "4", nice=WORKER_NICE)
    lat, errors, stop = [], [], time.monotonic() + 30 + 5
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/orders/nope", timeout=2)
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("orders: gunicorn did not start") from None
                time.sleep(0.1)
        start = time.monotonic()
        stop = start + 30
        cpu_before = _tree_cpu(web.pid), _tree_cpu(worker[0].pid), _machine_busy()

        def client(k: int) -> None:
            i = 0
            while time.monotonic() < stop:
                i += 1
                body = json.dumps(
                    {
                        "email": f"c{k}-{i}@example.com",
                        "name": "Bench Client",
                        "shipping_address": {
                            "line1": "1 Main St",
                            "city": "Berlin",
                            "postal_code": "10115",
                            "country": "DE",
                        },
                        "lines": [{"sku": skus[(k + i) % len(skus)], "quantity": 1}],
                        "payment_token": "tok_visa",
                    }
                ).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/orders",
                    data=body,
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        ok = resp.status == 201
                except (urllib.error.HTTPError, OSError) as exc:
                    ok = False
                    errors.append(str(exc))
                lat.append((time.perf_counter() - t) * 1000)
                if not ok and not errors:
                    errors.append("unexpected status")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.monotonic() - start
        busy, total = _machine_busy()
        ORDERS_CPU.update(
            web=(_tree_cpu(web.pid) - cpu_before[0]) / elapsed,
            worker=(_tree_cpu(worker[0].pid) - cpu_before[1]) / elapsed,
            machine=(busy - cpu_before[2][0]) / (total - cpu_before[2][1]),
        )
    finally:
        web.terminate()
        web.wait(30)
        for p in worker:
            p.terminate()
            # Its grace period (30 s) for the jobs in flight, and more on a loaded machine at nice 10.
            p.wait(180)
    lat.sort()
    return len(lat) / elapsed, lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(errors)


class OtlpSink:
    """A local OTLP/HTTP trace collector (bench/otlp_sink.py) in a process of its own, answering every
    export at once; ``spans`` is the number of spans it received."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [PY, str(ROOT / "bench" / "otlp_sink.py")], stdout=subprocess.PIPE, text=True
        )
        self.url = f"http://127.0.0.1:{self.process.stdout.readline().strip()}"

    @property
    def spans(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/spans", timeout=60) as resp:
            return int(resp.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def scenario_observability(db: str, n: int) -> str:
    """Drain (1 and 2 processes) and orders with tracing on (every span exported to a local OTLP sink)
    and JSON logs at INFO, beside both off, alternating, medians of 5 each way (a drain of 40,000 jobs
    lasts some 3 s, and on 2 shared cores one run in three strays by 10% or more). The rounds take turns
    at going first (off-on, on-off, ...): the database grows by a run's orders and jobs with each run,
    and the mode that always went second measured on the bigger one."""
    # Drains of a few seconds: 10,000 jobs take under one, where a second's kept traces (the reservoir's
    # and the ratio's, up to the ceiling) would weigh as much as the rest of the run.
    n = max(n, 40_000)
    sink = OtlpSink()
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    skus = _catalog()
    runs: dict[str, list[tuple]] = {"off": [], "on": []}
    try:
        for round_ in range(5):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                OBSERVE.clear()
                if mode == "on":
                    OBSERVE.update(on)
                one = _drain(db, n, 1, 4, vacuum=True)[1]
                two = _drain(db, n, 2, 4, vacuum=True)[1]
                rate, _, p99, errors = _orders(db, skus)
                if errors:
                    raise SystemExit(f"observability: {errors} order errors with {mode}")
                runs[mode].append((one, two, rate, p99))
        spans = sink.spans
    finally:
        OBSERVE.clear()
        sink.close()
    if not spans:
        raise SystemExit("observability: tracing was on but no span reached the sink")

    def med(mode: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[mode])

    parts = []
    for i, (name, unit) in enumerate(
        [("drain 1 process", "jobs/s"), ("drain 2", "jobs/s"), ("orders", "/s"), ("orders p99", "ms")]
    ):
        parts.append(
            f"{name} {med('on', i):.0f} vs {med('off', i):.0f} {unit} ({med('on', i) / med('off', i):.2f}x)"
        )
    each = "\n".join(
        f"  {mode} runs, in order: "
        + "   ".join(f"{a:.0f} {b:.0f} {c:.1f} {d:.0f}" for a, b, c, d in runs[mode])
        for mode in ("off", "on")
    )
    return f"observe  {db:8s} on vs off ({spans} spans exported): " + "   ".join(parts) + "\n" + each


def scenario_fairness(db: str, n: int) -> str:
    from bench.fairness import scenario_fairness as fairness

    return fairness(start_workers, OBSERVE, db)


def scenario_io(db: str, n: int) -> str:
    from bench.io_bound import scenario_io as io

    return io(start_workers, db)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "scenarios",
        nargs="*",
        help=f"any of {', '.join(SCENARIOS + SCALE_SCENARIOS + NAMED_SCENARIOS)}"
        f" (default: {', '.join(SCENARIOS)})",
    )
    ap.add_argument(
        "--scale", action="store_true", help=f"also run {', '.join(SCALE_SCENARIOS)} (PostgreSQL only)"
    )
    ap.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("-n", type=int, default=10_000, help="jobs per drain (default 10,000)")
    ap.add_argument("--child", nargs=2, metavar=("DB", "SCENARIO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        db, scenario = args.child
        child_setup()
        print(globals()[f"scenario_{scenario}"](db, args.n), flush=True)
        return
    unknown = set(args.scenarios) - set(SCENARIOS + SCALE_SCENARIOS + NAMED_SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    dbs = args.db.split(",")
    for scenario in args.scenarios or SCENARIOS + (SCALE_SCENARIOS if args.scale else []):
        for db in dbs:
            if scenario in SCALE_SCENARIOS and db != "postgres":
                print(f"{scenario:8s} {db:8s} skipped: a PostgreSQL-only scale scenario", flush=True)
                continue
            reset(db)
            quiesce(postgres="postgres" in dbs)
            subprocess.run(
                [PY, __file__, "--child", db, scenario, "-n", str(args.n)], env=env_for(db), check=True
            )


if __name__ == "__main__":
    main()
