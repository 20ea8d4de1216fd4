"""`make bench-io`: the io scenario on Celery + Redis beside ours, in one sitting (issue 19).

2,000 tasks each GET bench/slow_http.py (answers after 50 ms), drained by one `celery worker --pool
threads --concurrency C` for C = 4, 16, 64: tasks/s from the first task's start to the last one's
finish (as ours are read from the jobs' rows), medians of 3, rounds alternating; then `bench/run.py io`
(ours, the same server and GET) on the databases given, and one table.

Celery runs from the peers' venv (../shared/bench/peers.sh makes it: $PEERS_VENV or /tmp/peers-venv)
against Redis on 127.0.0.1, databases 11 and 12. Only the worker processes this script starts are
stopped. Usage: python bench/celery_io.py [--db postgres,sqlite]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.io_bound import CONCURRENCY, DELAY, N, start_server  # noqa: E402

PEERS_PY = Path(os.environ.get("PEERS_VENV", "/tmp/peers-venv")) / "bin" / "python"


def peers(code: str) -> str:
    """Run ``code`` in the peers' venv with bench/celery_io_app importable; its stdout."""
    out = subprocess.run(
        [str(PEERS_PY), "-c", f"import celery_io_app as app; {code}"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode:
        raise SystemExit(f"celery_io: {code!r} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def celery_run(port: int, concurrency: int) -> float:
    peers(f"app.reset(); app.enqueue({port}, {N})")
    worker = subprocess.Popen(
        [
            str(PEERS_PY),
            "-m",
            "celery",
            "-A",
            "celery_io_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=BENCH,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            done, first, last = (float(v) for v in peers("print(*app.progress())").split())
            if done >= N:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"celery_io: {done:.0f} of {N} tasks done (worker exit {worker.poll()})")
            time.sleep(0.5)
    finally:
        worker.terminate()  # ours: started above, no shell between
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    return N / (last - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="postgres,sqlite", help="ours on these databases (default both)")
    args = ap.parse_args()
    if not PEERS_PY.exists():
        raise SystemExit(f"{PEERS_PY} not found: `bash ../shared/bench/peers.sh -n 10 rq` creates the venv")
    print(f"sitting {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()}")
    server, port = start_server()
    runs: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
    try:
        for _ in range(3):
            for concurrency in CONCURRENCY:
                runs[concurrency].append(celery_run(port, concurrency))
    finally:
        server.terminate()
        server.communicate(timeout=30)
    celery = {c: statistics.median(r) for c, r in runs.items()}
    for c, r in runs.items():
        print(
            f"celery   --pool threads --concurrency {c:2d}: {celery[c]:6.0f} tasks/s of an ideal"
            f" {c / DELAY:5.0f}   (runs: {', '.join(f'{x:.0f}' for x in r)})",
            flush=True,
        )
    out = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "io", "--db", args.db], capture_output=True, text=True
    )
    sys.stdout.write(out.stdout)
    if out.returncode:
        raise SystemExit(f"bench/run.py io failed:\n{out.stderr[-3000:]}")
    print(
        f"\n{'concurrency':>11s} {'ideal':>6s} {'celery':>7s}",
        *(f"{'ours ' + db:>14s}" for db in args.db.split(",")),
    )
    for c in CONCURRENCY:
        ours = []
        for db in args.db.split(","):
            block = out.stdout.split(f"io       {db}", 1)[1]
            ours.append(float(re.search(rf"threads --concurrency {c:2d}:\s+(\d+) jobs/s", block).group(1)))
        print(
            f"{c:11d} {c / DELAY:6.0f} {celery[c]:7.0f}", *(f"{o:8.0f} ({o / celery[c]:.2f}x)" for o in ours)
        )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
