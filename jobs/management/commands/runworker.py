import gc

from django.core.management.base import BaseCommand, CommandError

from jobs.worker import Worker


def positive(kind):
    def parse(value: str):
        number = kind(value)
        if number <= 0:
            raise ValueError
        return number

    parse.__name__ = kind.__name__
    return parse


class Command(BaseCommand):
    help = "Run jobs from the queue until stopped (SIGTERM/SIGINT finish in-flight jobs first)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues", default="", help="Comma-separated queues to take jobs from (default: all)."
        )
        parser.add_argument(
            "--concurrency", type=positive(int), default=1, help="Jobs run at once (threads)."
        )
        parser.add_argument(
            "--prefetch",
            type=int,
            default=None,
            help=(
                "Jobs claimed ahead of free threads (default: adaptive, as many as --concurrency and"
                " more for short jobs; 0 for none)."
            ),
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit 0 once nothing is due or running (a job held back by a rate limit is due).",
        )
        parser.add_argument("--max-jobs", type=positive(int), default=None, help="Exit after this many jobs.")
        parser.add_argument(
            "--poll-interval", type=positive(float), default=None, help="Seconds between polls."
        )
        parser.add_argument(
            "--grace-period", type=float, default=None, help="Seconds to finish jobs at stop."
        )
        parser.add_argument(
            "--stale-after",
            type=positive(float),
            default=None,
            help="Seconds without heartbeat after which a running job is reclaimed.",
        )
        parser.add_argument("--worker-id", default=None, help="Identity (default: hostname-pid-random).")

    def handle(self, *args, **options):
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
        if options["prefetch"] is not None and options["prefetch"] < 0:
            raise CommandError("--prefetch must not be negative")
        if options["grace_period"] is not None and options["grace_period"] < 0:
            raise CommandError("--grace-period must not be negative")
        worker = Worker(
            queues=queues or None,
            concurrency=options["concurrency"],
            prefetch=options["prefetch"],
            burst=options["burst"],
            max_jobs=options["max_jobs"],
            poll_interval=options["poll_interval"],
            grace_period=options["grace_period"],
            stale_after=options["stale_after"],
            worker_id=options["worker_id"],
        )
        worker.install_signal_handlers()
        # What start-up built (Django, the apps, the handlers' modules: some 80,000-100,000 objects)
        # lives as long as the process: out of the collector's way, a full collection under load walks
        # only what the jobs made, not all of it again (50-70 ms each, several times a 20,000-job drain).
        gc.collect()
        gc.freeze()
        code = worker.run()
        if code:
            raise SystemExit(code)
