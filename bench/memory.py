"""Memory over long runs and at start-up (issue 19): `make bench-memory`, or
`python bench/memory.py [--db postgres,sqlite] [part ...]`.

Parts:
  worker   one `runworker --concurrency 4` runs --jobs no-op jobs, then --pipeline pipeline-like jobs
           (a ~2 KB payload, a result, one in ten failing its first attempt and retried), 100,000 at a
           time: each batch is enqueued, then drained before the next; its RSS after every batch
  web      one gunicorn worker (sync, as deploy/ runs it) takes --orders orders from 4 clients, with a
           runworker beside it running their pipelines: that gunicorn worker's RSS every tenth of them
  startup  peak RSS (VmHWM) of `runworker` once it is up and idle, and of one gunicorn worker after its
           first order; with --peers, the peers' workers (../shared/bench) started the same way, idle

RSS is read from /proc (VmRSS; VmHWM for the peak). Each part starts from a fresh database of its own
(PostgreSQL `bench_memory`, BENCH_PG_DB names another; SQLite /tmp/bench_memory.sqlite3, BENCH_SQLITE_PATH;
gunicorn on 127.0.0.1:8791, BENCH_WEB_PORT), so that it can run beside bench/run.py. The peers' workers
get databases named after ours (`<BENCH_PG_DB>_dtdb`, `<BENCH_PG_DB>_proc`) and Redis databases 11 and 13,
not the ones ../shared/bench/run.py recreates and flushes: an idle worker there would take another
sitting's jobs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SQLITE_PATH = os.environ.get("BENCH_SQLITE_PATH", "/tmp/bench_memory.sqlite3")
PG_DB = os.environ.get("BENCH_PG_DB", "bench_memory")
WEB_PORT = int(os.environ.get("BENCH_WEB_PORT", "8791"))
URLS = {"sqlite": f"sqlite:///{SQLITE_PATH}", "postgres": f"postgres://postgres@127.0.0.1:5432/{PG_DB}"}
PARTS = ["worker", "web", "startup"]
BATCH = 100_000
PEERS_DIR = ROOT.parent / "shared" / "bench"
PEERS_VENV = Path(os.environ.get("PEERS_VENV", "/tmp/peers-venv"))


def env_for(db: str, **extra: str) -> dict:
    env = dict(
        os.environ, DATABASE_URL=URLS[db], DJANGO_SETTINGS_MODULE="bench.settings", PYTHONPATH=str(ROOT)
    )
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


def status_kb(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in kB (VmRSS: resident now; VmHWM: the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid}")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def wait_until(condition, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- parts, run in a child process with Django set up on one database -----------------------------------


def part_worker(db: str, args) -> str:
    from jobs.api import enqueue_many
    from jobs.models import Job, JobStatus, WorkerProcess

    def unfinished() -> bool:
        return Job.objects.filter(queue="bench", status__in=[JobStatus.PENDING, JobStatus.RUNNING]).exists()

    lines = [
        {
            "sku": f"SKU-{k:04d}",
            "name": f"Demo product number {k} in its long name",
            "quantity": k % 3 + 1,
            "unit_price": "19.90",
        }
        for k in range(20)
    ]
    address = {"line1": "1 Main Street", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    worker = subprocess.Popen(
        [PY, "manage.py", "runworker", "--queues", "bench", "--concurrency", "4"],
        cwd=ROOT,
        env=env_for(db),
        stdout=subprocess.DEVNULL,
    )
    samples: list[tuple[int, int]] = []
    try:
        wait_until(WorkerProcess.objects.exists, 60, "the worker to start")
        started = status_kb(worker.pid, "VmRSS")
        done = 0
        batch = args.batch
        for job_type in ["bench.noop"] * (args.jobs // batch) + ["bench.pipeline"] * (args.pipeline // batch):
            for start in range(0, batch, 1000):
                if job_type == "bench.noop":
                    payloads = [{"i": i} for i in range(start, start + 1000)]
                else:
                    payloads = [
                        {
                            "order": f"B-{done + i}",
                            "email": f"c{i}@example.com",
                            "address": address,
                            "lines": lines,
                            "fail_first": i % 10 == 0,
                        }
                        for i in range(start, start + 1000)
                    ]
                enqueue_many(job_type, payloads)
            wait_until(lambda: not unfinished(), 3600, f"{job_type} jobs to finish", interval=0.5)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            done += batch
            samples.append((done, status_kb(worker.pid, "VmRSS")))
            print(f"  worker {db}: {done:>9,} jobs  RSS {mb(samples[-1][1])}", flush=True)
        failed = Job.objects.filter(queue="bench").exclude(status=JobStatus.SUCCEEDED).count()
    finally:
        stop(worker)
    first, last = samples[0][1], samples[-1][1]
    return (
        f"memory worker {db:8s} RSS at start {mb(started)}, after the first {args.batch:,} jobs {mb(first)},"
        f" after {samples[-1][0]:,} {mb(last)} = {last / first:.2f}x (target <= 1.2x);"
        f" not succeeded: {failed}\n"
        f"  every {args.batch:,}: " + ", ".join(mb(kb) for _, kb in samples)
    )


def _web(db: str, port: int) -> tuple[subprocess.Popen, int]:
    """gunicorn with one sync worker, as deploy/ runs it (CONN_MAX_AGE 60); (master, its worker's pid)
    once it answers."""
    web = subprocess.Popen(
        [PY, "-m", "gunicorn", "shop.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "--log-level", "warning"],
        cwd=ROOT,
        env=env_for(db, CONN_MAX_AGE="60"),
    )

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/orders/nope", timeout=2)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    wait_until(answers, 60, "gunicorn to answer")
    (pid,) = children(web.pid)
    return web, pid


def _post_order(port: int, sku: str, email: str) -> None:
    body = {
        "email": email,
        "name": "Bench Client",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "lines": [{"sku": sku, "quantity": 1}],
        "payment_token": "tok_visa",
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/orders",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status != 201:
            raise SystemExit(f"order answered {resp.status}")


def _catalog() -> list[str]:
    from django.core.management import call_command

    from shop.models import Product

    call_command("load_demo_catalog", verbosity=0)
    Product.objects.update(stock=10_000_000)
    return list(Product.objects.filter(active=True).values_list("sku", flat=True))


def part_web(db: str, args) -> str:
    skus = _catalog()
    port = WEB_PORT
    web, pid = _web(db, port)
    queues = "email,default,inventory,webhooks,invoices"
    worker = subprocess.Popen(
        ["nice", "-n", "10", PY, "manage.py", "runworker", "--queues", queues, "--concurrency", "4"],
        cwd=ROOT,
        env=env_for(db),
        stdout=subprocess.DEVNULL,
    )
    step = max(1, args.orders // 10)
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}
    samples: list[tuple[int, int]] = []
    boundary = threading.Condition(lock)

    def client() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= args.orders:
                    return
                state["next"] += 1
            try:
                _post_order(port, skus[i % len(skus)], f"soak-{i}@example.com")
            except (OSError, SystemExit) as exc:
                with lock:
                    state["errors"] += 1
                print(f"  order {i}: {exc}", flush=True)
            with lock:
                state.setdefault("done", 0)
                state["done"] += 1
                if state["done"] % step == 0:
                    samples.append((state["done"], status_kb(pid, "VmRSS")))
                    print(f"  web {db}: {state['done']:>7,} orders  RSS {mb(samples[-1][1])}", flush=True)
                    boundary.notify_all()

    try:
        started = status_kb(pid, "VmRSS")
        threads = [threading.Thread(target=client) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        stop(web)
        stop(worker)
    first, last = samples[0][1], samples[-1][1]
    return (
        f"memory web    {db:8s} RSS at start {mb(started)}, after {samples[0][0]:,} orders {mb(first)}, after"
        f" {samples[-1][0]:,} {mb(last)} = {last / first:.2f}x (target <= 1.2x); errors {state['errors']}\n"
        "  every tenth: " + ", ".join(mb(kb) for _, kb in samples)
    )


def part_startup(db: str, args) -> str:
    from jobs.models import WorkerProcess

    worker = subprocess.Popen(
        [PY, "manage.py", "runworker", "--concurrency", "4"],
        cwd=ROOT,
        env=env_for(db),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(WorkerProcess.objects.exists, 60, "the worker to start")
        time.sleep(2)  # a few idle passes of its loop, plugins included
        worker_peak = status_kb(worker.pid, "VmHWM")
    finally:
        stop(worker)
    skus = _catalog()
    web, pid = _web(db, WEB_PORT)
    try:
        _post_order(WEB_PORT, skus[0], "startup@example.com")
        web_peak = status_kb(pid, "VmHWM")
    finally:
        stop(web)
    lines = [
        f"memory startup {db:8s} runworker peak RSS {mb(worker_peak)} (target < 120 MB), one gunicorn worker"
        f" after its first order {mb(web_peak)} (target < 100 MB)"
    ]
    if args.peers and db == "postgres":
        lines += [f"  {name:14s} idle worker peak RSS {mb(kb)}" for name, kb in peers_startup()]
    return "\n".join(lines)


def peers_startup() -> list[tuple[str, int]]:
    """Each peer's worker as ../shared/bench/run.py starts it (one process; Celery's prefork with one
    child), idle for 3 s after it came up: the peak RSS of its processes together. Their databases are
    our own (see the module's docstring): two small modules in a temporary directory point the peers'
    apps at them."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        # peers.sh creates the venv, then runs ../shared/bench/run.py: --help measures nothing.
        subprocess.run(["bash", str(PEERS_DIR / "peers.sh"), "--help"], check=True, capture_output=True)
    dtdb_db, proc_db = f"{PG_DB}_dtdb", f"{PG_DB}_proc"
    with tempfile.TemporaryDirectory(prefix="bench_memory_peers") as tmp:
        Path(tmp, "mem_dtdb_settings.py").write_text(
            f"from dtdb.settings import *  # noqa\nDATABASES['default']['NAME'] = {dtdb_db!r}\n"
        )
        Path(tmp, "mem_proc_app.py").write_text(
            "import procrastinate\nimport proc_app\n"
            "app = proc_app.app.with_connector(procrastinate.PsycopgConnector("
            f"conninfo='host=127.0.0.1 user=postgres dbname={proc_db}'))\n"
        )
        here = str(PEERS_DIR)
        # Not our DJANGO_SETTINGS_MODULE or DATABASE_URL: Celery's Django fix-up would import our settings.
        base = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
        base["PYTHONPATH"] = f"{tmp}:{here}"
        dtdb_env = dict(base, BENCH_DB="postgres", DJANGO_SETTINGS_MODULE="mem_dtdb_settings")
        recreate = "psql -h 127.0.0.1 -U postgres -qc 'DROP DATABASE IF EXISTS {0}' -c 'CREATE DATABASE {0}'"
        setup = [
            (recreate.format(dtdb_db), base),
            (f"{py} dtdb/manage.py migrate -v0", dtdb_env),
            (recreate.format(proc_db), base),
            (f"{py} -m procrastinate --app=mem_proc_app.app schema --apply", base),
        ]
        for cmd, env in setup:
            subprocess.run(cmd, shell=True, cwd=here, env=env, check=True, capture_output=True)
        peers = [
            ("django-tasks-db", f"{py} dtdb/manage.py db_worker --interval 0.5", dtdb_env),
            ("procrastinate", f"{py} -m procrastinate --app=mem_proc_app.app worker -c 10", base),
            (
                "celery (prefork)",
                f"{py} -m celery -A celery_app -b redis://127.0.0.1:6379/11 worker -c 1 --pool prefork"
                " -l WARNING --without-gossip --without-mingle --without-heartbeat",
                base,
            ),
            ("rq", f"{py} -m rq.cli worker --url redis://127.0.0.1:6379/13 -q", base),
        ]
        found = []
        for name, cmd, env in peers:
            proc = subprocess.Popen(
                cmd.split(), cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(3)  # no readiness signal common to all four: they have come up well within this
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}")
                found.append((name, sum(status_kb(p, "VmHWM") for p in [proc.pid, *children(proc.pid)])))
            finally:
                stop(proc)
        for db in (dtdb_db, proc_db):
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE {db}"], check=True
            )
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)} (default: all)")
    ap.add_argument("--db", default="postgres", help="comma-separated: sqlite, postgres (default postgres)")
    ap.add_argument("--jobs", type=int, default=1_000_000, help="no-op jobs (default 1,000,000)")
    ap.add_argument("--pipeline", type=int, default=100_000, help="pipeline-like jobs (default 100,000)")
    ap.add_argument("--orders", type=int, default=20_000, help="orders for the web part (default 20,000)")
    ap.add_argument(
        "--batch", type=int, default=BATCH, help="jobs enqueued and drained at a time (default 100,000)"
    )
    ap.add_argument("--peers", action="store_true", help="startup: the peers' workers too (PostgreSQL)")
    ap.add_argument("--child", nargs=2, metavar=("DB", "PART"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import django

        django.setup()
        db, part = args.child
        print(globals()[f"part_{part}"](db, args), flush=True)
        return
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if args.batch % 1000 or args.jobs % args.batch or args.pipeline % args.batch:
        ap.error("--batch is a multiple of 1,000, and --jobs and --pipeline multiples of --batch")
    for part in args.parts or PARTS:
        for db in args.db.split(","):
            reset(db)
            child = [
                PY,
                __file__,
                "--child",
                db,
                part,
                "--jobs",
                str(args.jobs),
                "--pipeline",
                str(args.pipeline),
            ]
            child += ["--orders", str(args.orders), "--batch", str(args.batch)] + (
                ["--peers"] if args.peers else []
            )
            subprocess.run(child, env=env_for(db), check=True)


if __name__ == "__main__":
    main()
