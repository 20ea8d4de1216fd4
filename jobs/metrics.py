"""Prometheus metrics of the queue: depth, lag, per-type counters and run-time histograms (from the
JobStat counters the workers flush, never a count over the job table), and workers alive.

Protected: a request carries ``Authorization: Bearer <JOBS_METRICS_TOKEN>`` or a staff session.
"""

import hmac
from collections import defaultdict

from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jobs import alerts, conf, db, read_model
from jobs.models import Alert, DeadLetter, JobStat, JobTypeState, WorkerProcess
from jobs.registry import job_types
from jobs.worker_counters import BUCKETS

OUTCOMES = {
    "started": "Jobs started (claimed and run) by type.",
    "succeeded": "Jobs that succeeded by type.",
    "failed": "Failed attempts that will be retried, by type.",
    "dead": "Jobs moved to the dead letters by type.",
    "cancelled": "Jobs cancelled while running, by type.",
    "snoozed": "Attempts whose handler asked to run later (Snooze, no attempt used), by type.",
    "lost": "Jobs whose worker was lost while running, by type.",
}


class QueueCollector:
    def collect(self):
        now = db.now()  # the clock that stamped heartbeats and due times
        depth = GaugeMetricFamily(
            "jobs_queue_depth", "Unfinished jobs by queue and status.", labels=["queue", "status"]
        )
        due = GaugeMetricFamily("jobs_queue_due", "Pending jobs that are due now.", labels=["queue"])
        lag = GaugeMetricFamily(
            "jobs_queue_lag_seconds", "Age of the oldest due pending job.", labels=["queue"]
        )
        paused = GaugeMetricFamily("jobs_queue_paused", "1 if staff paused the queue.", labels=["queue"])
        stuck = GaugeMetricFamily(
            "jobs_queue_stuck",
            "Running jobs whose heartbeat is older than JOBS_STALE_AFTER (no live worker).",
            labels=["queue"],
        )
        stalled = GaugeMetricFamily(
            "jobs_queue_stalled",
            "1 if the queue has due jobs and none finished for JOBS_STALL_AFTER seconds.",
            labels=["queue"],
        )
        over_slo = GaugeMetricFamily(
            "jobs_queue_lag_over_slo", "1 if the queue's lag exceeds its JOBS_LAG_SLO.", labels=["queue"]
        )
        rows = read_model.queue_rows(now)
        wrong = alerts.conditions(now, rows)
        flagged = {c.key for c in wrong}
        for row in rows:
            stalled.add_metric([row.name], 1 if (Alert.Kind.STALLED, row.name) in flagged else 0)
            over_slo.add_metric([row.name], 1 if (Alert.Kind.LAG, row.name) in flagged else 0)
            for status in ("blocked", "pending", "running"):
                depth.add_metric([row.name, status], getattr(row, status))
            due.add_metric([row.name], row.due)
            lag.add_metric([row.name], row.lag_seconds)
            paused.add_metric([row.name], 1 if row.paused else 0)
            stuck.add_metric([row.name], row.stuck)
        yield from (depth, due, lag, paused, stuck, stalled, over_slo)
        yield GaugeMetricFamily(
            "jobs_dead_workers_holding_jobs",
            "Workers silent past JOBS_STALE_AFTER whose jobs still run under their id.",
            value=sum(1 for c in wrong if c.kind == Alert.Kind.DEAD_WORKER),
        )
        yield GaugeMetricFamily(
            "jobs_dead_letter_burst",
            "1 if at least JOBS_DEAD_LETTER_BURST dead letters came within JOBS_DEAD_LETTER_WINDOW seconds.",
            value=sum(1 for c in wrong if c.kind == Alert.Kind.DEAD_LETTERS),
        )
        type_paused = GaugeMetricFamily(
            "jobs_type_paused", "1 if staff paused the job type (0: known, running).", labels=["type"]
        )
        states = dict(JobTypeState.objects.values_list("name", "paused"))
        for name in sorted(set(job_types()) | set(states)):
            type_paused.add_metric([name], 1 if states.get(name) else 0)
        yield type_paused
        breakers_open = GaugeMetricFamily(
            "jobs_breakers_open",
            "Circuit breakers open or half-open (probing), by job type (one per key for a keyed type).",
            labels=["type"],
        )
        open_by_type: dict[str, int] = defaultdict(int)
        for b in read_model.open_breakers():
            open_by_type[b.type] += 1
        for name in sorted({n for n, jt in job_types().items() if jt.breaker} | set(open_by_type)):
            breakers_open.add_metric([name], open_by_type[name])
        yield breakers_open

        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        buckets: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        seconds: dict[str, float] = defaultdict(float)
        for job_type, outcome, bucket, n, s in JobStat.objects.values_list(
            "type", "outcome", "bucket", "count", "seconds"
        ):
            counts[outcome][job_type] += n
            if bucket:
                buckets[job_type][bucket] += n
                seconds[job_type] += s
        for outcome, doc in OUTCOMES.items():
            family = CounterMetricFamily(f"jobs_{outcome}", doc, labels=["type"])
            for job_type, n in sorted(counts[outcome].items()):
                family.add_metric([job_type], n)
            yield family
        histogram = HistogramMetricFamily(
            "jobs_run_seconds", "Run time of finished attempts by type.", labels=["type"]
        )
        for job_type, per_bucket in sorted(buckets.items()):
            cumulative, points = 0, []
            for bound in [f"{b:g}" for b in BUCKETS] + ["+Inf"]:
                cumulative += per_bucket.get(bound, 0)
                points.append((bound, cumulative))
            histogram.add_metric([job_type], points, sum_value=seconds[job_type])
        yield histogram

        stale = conf.get("JOBS_STALE_AFTER")
        alive = sum(1 for w in WorkerProcess.objects.all() if w.is_alive(now, stale))
        yield GaugeMetricFamily("jobs_workers_alive", "Worker processes heartbeating.", value=alive)
        open_dead = DeadLetter.objects.open().count()
        yield GaugeMetricFamily(
            "jobs_dead_letters_open", "Dead letters neither requeued nor discarded.", value=open_dead
        )


def authorized(request) -> bool:
    token = conf.get("JOBS_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())
    user = request.user
    return user.is_authenticated and user.is_active and user.is_staff


@never_cache
def metrics(request):
    if not authorized(request):
        return HttpResponse(
            "metrics need a bearer token (JOBS_METRICS_TOKEN) or a staff session\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="jobs"'},
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
