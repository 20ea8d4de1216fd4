"""The queue in the Django admin, a module per family of pages (jobs, dead letters, schedules; queues,
workers and the audit trail) and what they share (``common``). The engine owns job state, so jobs and
dead letters are read-only here: every change goes through ``jobs.staff`` (retry, cancel, requeue,
discard ...), which audits it.

Retrying, cancelling, requeuing, discarding and running schedules need their own permissions, so a
support role with only the view permissions can look without touching.
"""

from jobs.admin import breakers, dead_letters, job_admin, processes, schedules  # noqa: F401 (the pages)
from jobs.admin.common import EstimatedCountPaginator

__all__ = ["EstimatedCountPaginator"]
