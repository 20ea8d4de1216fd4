"""The io scenario (issue 19): jobs that wait on the network, as webhook deliveries do. Run by
bench/run.py (`python bench/run.py io`).

2,000 jobs each GET a local HTTP server that answers after 50 ms (bench/slow_http.py, an asyncio process
of its own), drained by one `runworker --burst --concurrency C` for C = 4, 16, 64 (`bench.io`: a
blocking http.client GET in the handler's thread), and at 64 by the same worker running the `async
def` handler (`bench.io_async`, asyncio streams). Reported: jobs/s from the first claim to the last
completion (the jobs' rows), beside the ideal C / 0.05 s, medians of 3 runs, rounds alternating; and
what was busy meanwhile, in cores (1.0 = one core throughout): the worker process, the HTTP server,
and the rest of the machine (the database's processes, this script, and anyone else's load), sampled
from /proc over the same span.
"""

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

N = 2000
DELAY = 0.05
CONCURRENCY = (4, 16, 64)
ASYNC_AT = 64
TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def _machine_busy() -> float:
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


class Sampler:
    """CPU seconds of the worker, the server and the whole machine every 20 ms, with the wall time."""

    def __init__(self, worker: int, server: int):
        self.pids = worker, server
        self.samples: list[tuple[float, float, float, float]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while not self.done.is_set():
            worker, server = (_process_cpu(pid) for pid in self.pids)
            if worker == worker:  # not nan: the worker is still there
                self.samples.append((time.time(), worker, server, _machine_busy()))
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def cores(self, start: float, end: float) -> tuple[float, float, float]:
        """(worker, server, rest of the machine) in cores between two wall times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan"), float("nan")
        (t0, w0, s0, m0), (t1, w1, s1, m1) = inside[0], inside[-1]
        span = t1 - t0
        worker, server, machine = (w1 - w0) / span, (s1 - s0) / span, (m1 - m0) / span
        return worker, server, machine - worker - server


def start_server() -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.slow_http", "--port", "0", "--delay", str(DELAY)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    if not line.startswith("listening on "):
        server.kill()
        raise SystemExit(f"io: the HTTP server did not start ({line!r})")
    return server, int(line.split()[-1])


def _run(start_workers, db: str, server: subprocess.Popen, port: int, job_type: str, concurrency: int):
    """(jobs/s first claim to last completion, (worker, server, rest) cores meanwhile)"""
    from django.db import connection
    from django.db.models import Max, Min

    from jobs.api import enqueue_many
    from jobs.models import Job, JobStatus

    Job.objects.all().delete()
    enqueue_many(job_type, [{"port": port, "path": f"/{i}"} for i in range(N)])
    connection.close()  # SQLite: no reader of ours beside the worker's writes
    (proc,) = start_workers(db, 1, "--burst", "--concurrency", str(concurrency))
    sampler = Sampler(proc.pid, server.pid)
    try:
        code = proc.wait(600)
    finally:
        sampler.stop()
    done = Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    if code or done != N:
        raise SystemExit(f"io: {done} of {N} {job_type} jobs succeeded (worker exit code {code})")
    span = Job.objects.aggregate(a=Min("started_at"), b=Max("finished_at"))
    seconds = (span["b"] - span["a"]).total_seconds()
    return N / seconds, sampler.cores(span["a"].timestamp(), span["b"].timestamp())


def scenario_io(start_workers, db: str) -> str:
    server, port = start_server()
    runs: dict[tuple[str, int], list] = {}
    started = time.perf_counter()
    load = os.getloadavg()
    try:
        for _ in range(3):
            for concurrency in CONCURRENCY:
                modes = ["threads", "async"] if concurrency == ASYNC_AT else ["threads"]
                for mode in modes:
                    job_type = "bench.io" if mode == "threads" else "bench.io_async"
                    runs.setdefault((mode, concurrency), []).append(
                        _run(start_workers, db, server, port, job_type, concurrency)
                    )
    finally:
        server.terminate()
        answered = server.communicate(timeout=30)[0].strip()
    lines = [
        f"io       {db:8s} {N} jobs x GET answered after {DELAY * 1000:.0f} ms, 1 process; medians of 3"
        f" ({time.perf_counter() - started:.0f} s in all; load average {load[0]:.2f} at the start;"
        f" server: {answered})"
    ]
    for (mode, concurrency), results in runs.items():
        rate = statistics.median(r[0] for r in results)
        worker, srv, rest = (statistics.median(r[1][i] for r in results) for i in range(3))
        ideal = concurrency / DELAY
        lines.append(
            f"  {mode:7s} --concurrency {concurrency:2d}: {rate:6.0f} jobs/s of an ideal {ideal:5.0f}"
            f" ({rate / ideal:4.0%})   cores busy: worker {worker:.2f}, server {srv:.2f}, rest of the"
            f" machine {rest:.2f}   (runs: {', '.join(f'{r[0]:.0f}' for r in results)})"
        )
    return "\n".join(lines)
