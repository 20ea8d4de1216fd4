"""The ``jobs`` command's sub-commands and their options (jobs/management/commands/jobs.py runs them)."""

from jobs.models import JobStatus


def add_actions(parser) -> None:
    """The sub-commands and their options."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    stats = sub.add_parser("stats", help="Queue depth, lag, throughput, dead letters, workers.")
    stats.add_argument("--json", action="store_true", help="Print JSON instead of text.")

    ls = sub.add_parser("list", help="List jobs, newest first.")
    ls.add_argument("--status", action="append", choices=JobStatus.values, help="Repeat for several.")
    ls.add_argument("--type", dest="job_type")
    ls.add_argument("--queue")
    ls.add_argument("--limit", type=int, default=50)

    show = sub.add_parser("show", help="A job with its payload, result, errors and audit trail.")
    show.add_argument("job_id", type=int, metavar="ID")

    why = sub.add_parser("why", help="Why a job is not running now: the reasons in order.")
    why.add_argument("job_id", type=int, metavar="ID")

    alerts_ = sub.add_parser("alerts", help="Open incidents: stalled queues, lag over SLO, dead workers ...")
    alerts_.add_argument(
        "--check", action="store_true", help="Evaluate the alerts once first (emails what opened or closed)."
    )

    retry = sub.add_parser("retry", help="Retry jobs now (dead: requeued), or requeue dead letters.")
    retry.add_argument("job_ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--dead", action="store_true", help="Requeue every open dead letter.")
    retry.add_argument("--type", dest="job_type", help="With --dead: only dead letters of this type.")

    cancel = sub.add_parser("cancel", help="Cancel jobs (running ones are asked to stop).")
    cancel.add_argument("job_ids", type=int, nargs="+", metavar="ID")
    cancel.add_argument("--reason", default="")

    bulk = sub.add_parser(
        "bulk",
        help="Retry or cancel every job, or requeue or discard every open dead letter, matching a filter "
        "(in batches, each audited with the filter).",
    )
    bulk.add_argument("bulk_action", metavar="retry|cancel|requeue|discard")
    bulk.add_argument("--type", dest="job_type", default="")
    bulk.add_argument("--queue", default="")
    bulk.add_argument("--status", default="", help="Jobs only (retry, cancel).")
    bulk.add_argument("--error-class", default="", help="Dead letters only (requeue, discard).")
    bulk.add_argument("--tag", default="", help="Jobs carrying this tag (dead letters: their job's).")
    bulk.add_argument("--since", help="From this ISO date or datetime (inclusive).")
    bulk.add_argument("--until", help="Before this ISO date or datetime.")
    bulk.add_argument(
        "--by", default="created", choices=["created", "finished"], help="The time --since/--until bound."
    )
    bulk.add_argument("--all", dest="everything", action="store_true", help="An empty filter: every row.")
    bulk.add_argument("--dry-run", action="store_true", help="Print how many rows match; change nothing.")
    bulk.add_argument("--reason", default="", help="Why (required to discard; a cancelled job's reason).")
    bulk.add_argument("--batch-size", type=int, help="Rows per transaction (default JOBS_BULK_BATCH_SIZE).")

    enqueue = sub.add_parser("enqueue", help="Enqueue a job; the payload is validated.")
    enqueue.add_argument("job_type", metavar="TYPE")
    enqueue.add_argument("--payload", default="{}", help="A JSON object (default {}).")
    enqueue.add_argument("--delay", help="Run after an age such as 30s, 10m, 2h.")
    enqueue.add_argument("--priority", type=int)

    pause = sub.add_parser("pause", help="Stop every worker claiming from a queue.")
    pause.add_argument("queue")
    resume = sub.add_parser("resume", help="Let workers claim from a paused queue again.")
    resume.add_argument("queue")
    pause_type = sub.add_parser("pause-type", help="Stop every worker claiming jobs of one type.")
    pause_type.add_argument("job_type", metavar="TYPE")
    resume_type = sub.add_parser("resume-type", help="Let workers claim a paused job type again.")
    resume_type.add_argument("job_type", metavar="TYPE")

    sub.add_parser("breakers", help="Circuit breakers that are open or half-open (probing).")
    breaker = sub.add_parser("breaker", help="Close a circuit breaker: workers claim its jobs again.")
    breaker_sub = breaker.add_subparsers(dest="breaker_action", required=True, metavar="close")
    close = breaker_sub.add_parser("close", help="Close the breaker of a job type (or of one of its keys).")
    close.add_argument("job_type", metavar="TYPE")
    close.add_argument("--key", default="", help="The concurrency key, for a type whose breaker is per key.")

    cron = sub.add_parser("cron", help="List cron schedules or run one now.")
    cron_sub = cron.add_subparsers(dest="cron_action", required=True, metavar="list|run")
    cron_sub.add_parser("list", help="List schedules with their next and last run.")
    run = cron_sub.add_parser("run", help="Enqueue a schedule's job now.")
    run.add_argument("name")
    health = sub.add_parser(
        "health", help="Exit 0 if a worker on this host heartbeats from its claim loop, else 1."
    )
    health.add_argument(
        "--max-heartbeat-age",
        type=float,
        metavar="S",
        help="Seconds since the last heartbeat still counted as alive (default JOBS_STALE_AFTER).",
    )
    prune = sub.add_parser("prune", help="Delete finished jobs (succeeded, cancelled) older than an age.")
    prune.add_argument("--older-than", default="7d", help="Age such as 7d, 12h, 30m (default 7d).")
