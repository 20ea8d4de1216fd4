"""Error reports to Sentry, off unless ``SENTRY_DSN`` is set.

Reported: unhandled web errors (Django's, and the JSON API's logged 500s) and every job that ends in
the dead letters, once, tagged with the job's id, type, attempt and queue and the order it was about;
an attempt that will be retried is not an error report. Customer emails and payment tokens are
filtered out of every event before it leaves the process (``shop.privacy``).
"""

import logging
from typing import Any

from django.conf import settings

from shop import logging as log_context
from shop.privacy import scrub_data

log = logging.getLogger(__name__)

# The engine's own loggers: a dead job is reported once, by the job_dead receiver, not by its log line.
ENGINE_LOGGERS = ("jobs", "jobs.worker", "jobs.signals")
CONTEXT_TAGS = ("request_id", "order_number", "job_id", "job_type", "attempt", "queue", "worker_id")

_enabled = False


def setup(dsn: str | None = None, **options: Any) -> bool:
    """Initialise the SDK when ``SENTRY_DSN`` (or ``dsn``) is set; returns whether reports are on."""
    global _enabled
    dsn = dsn or settings.SENTRY_DSN
    if not dsn:
        return False
    import sentry_sdk
    from django.core.exceptions import ImproperlyConfigured
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(dsn)
    except BadDsn as exc:
        raise ImproperlyConfigured(f"SENTRY_DSN is not a valid DSN: {exc}.") from None
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.SENTRY_ENVIRONMENT,
        release=settings.SENTRY_RELEASE or None,
        integrations=[DjangoIntegration()],
        include_local_variables=False,
        before_send=before_send,
        before_breadcrumb=lambda crumb, hint: scrub_data(crumb),
        **options,
    )
    for name in ENGINE_LOGGERS:
        ignore_logger(name)
    from jobs.models import Job
    from jobs.signals import job_dead

    job_dead.connect(report_dead_job, sender=Job, dispatch_uid="shop.sentry.report_dead_job")
    _enabled = True
    return True


def teardown() -> None:
    """Stop reporting (tests): flush what is queued and disconnect the receiver."""
    global _enabled
    if not _enabled:
        return
    import sentry_sdk

    from jobs.models import Job
    from jobs.signals import job_dead

    job_dead.disconnect(sender=Job, dispatch_uid="shop.sentry.report_dead_job")
    sentry_sdk.flush(5)
    sentry_sdk.init(dsn=None)
    _enabled = False


def before_send(event: dict, hint: dict) -> dict:
    """Tag the event with the context in force (request, order, job) and filter customer data out."""
    tags = event.setdefault("tags", {})
    for key in CONTEXT_TAGS:
        value = log_context.current().get(key)
        if value is not None and key not in tags:
            tags[key] = str(value)
    return scrub_data(event)


def report_dead_job(sender, job, error: BaseException | None = None, **kwargs) -> None:
    """job_dead receiver: one report per job that gave up, with the job's context."""
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("job_id", str(job.id))
        scope.set_tag("job_type", job.type)
        scope.set_tag("attempt", str(job.attempts))
        scope.set_tag("queue", job.queue)
        payload = job.payload if isinstance(job.payload, dict) else {}
        order_number = log_context.current().get("order_number")
        if order_number:
            scope.set_tag("order_number", str(order_number))
        if "order_id" in payload:
            scope.set_tag("order_id", str(payload["order_id"]))
        scope.set_context("job", {"max_attempts": job.max_attempts, "worker": job.locked_by})
        scope.fingerprint = ["job-dead", job.type, type(error).__name__ if error else "unknown"]
        if error is not None:
            sentry_sdk.capture_exception(error)
        else:
            sentry_sdk.capture_message(f"job {job.id} {job.type} is dead", level="error")
