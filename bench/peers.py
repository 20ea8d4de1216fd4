"""`make bench-peers`: the peers (../shared/bench/peers.sh) and our enqueue and drain scenarios in one
sitting, then one table with the ratios. Usage: python bench/peers.py [-n 10000]"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "bench" / "peers.sh"
NUMBER = r"([\d.]+)"


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    if out.returncode:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"{cmd[0]} failed with exit code {out.returncode}")
    return out.stdout


def stop_stray_celery_workers() -> None:
    """peers.sh stops Celery by terminating the shell it started it from, which can leave the Celery
    worker and its pool running: a stray worker takes the next sitting's tasks as they are enqueued
    (seen: 415,000 "jobs/s"). Stop any before and after the peers run, and say so."""
    import os
    import signal
    import time

    def strays() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue  # exited meanwhile
                if b"celery" in cmdline and b"celery_app worker" in cmdline:
                    pids.append(int(entry.name))
        return pids

    found = strays()
    if not found:
        return
    print(f"stopping {len(found)} stray Celery worker process(es) of the peers' benchmark: {found}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in strays():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while strays() and time.monotonic() < deadline:
            time.sleep(0.1)
    if strays():
        raise SystemExit(f"stray Celery workers still running: {strays()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=10_000)
    args = ap.parse_args()
    if not PEERS.exists():
        raise SystemExit(
            f"{PEERS} not found: the peers' benchmark lives in the shared folder beside the repo"
        )
    peers: dict[str, tuple[float, float]] = {}
    stop_stray_celery_workers()
    try:
        output = run(["bash", str(PEERS), "-n", str(args.n), "-w", "2"])
    finally:
        stop_stray_celery_workers()
    for line in output.splitlines():
        m = re.match(rf"(\S+)\s+enqueue\s+{NUMBER} jobs/s\s+drain\(2 workers\)\s+{NUMBER} jobs/s", line)
        if m:
            peers[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    ours: dict[str, tuple[float, float]] = {}
    out = run([sys.executable, "bench/run.py", "enqueue", "drain", "-n", str(args.n)])
    for db in ("sqlite", "postgres"):
        enq = re.search(rf"enqueue\s+{db}\s+one per transaction\s+{NUMBER}", out)
        drain = re.search(rf"drain\s+{db}\s.*2 process\(es\)\s+{NUMBER} jobs/s wall", out)
        ours[f"ours-{db}"] = (float(enq.group(1)), float(drain.group(1)))

    print(f"\n{'queue':16s} {'enqueue/s':>10s} {'drain/s (2 procs)':>18s}")
    for name, (enq, drn) in {**peers, **ours}.items():
        print(f"{name:16s} {enq:10.0f} {drn:18.0f}")
    print("\nratios (ours / peer), same sitting:")
    for db, peer in (
        ("postgres", "dtdb-postgres"),
        ("sqlite", "dtdb-sqlite"),
        ("postgres", "procrastinate"),
        ("postgres", "celery-redis"),
        ("postgres", "rq"),
    ):
        if peer in peers:
            (oe, od), (pe, pd) = ours[f"ours-{db}"], peers[peer]
            print(f"  ours-{db:8s} vs {peer:14s} enqueue {oe / pe:5.2f}x   drain {od / pd:5.2f}x")


if __name__ == "__main__":
    main()
