from django.db.models.signals import post_migrate
from django.dispatch import Signal, receiver

job_finished = Signal()
"""Sent with ``jobs`` (Job instances as claimed, not re-read) by the process that recorded their final
outcome (succeeded, dead or cancelled), once per outcome, after the transaction recording it (or
inside the caller's, in immediate mode). The Tasks backend sends ``task_finished`` from it."""


@receiver(post_migrate)
def register_declared_schedules(sender, app_config=None, **kwargs) -> None:
    """Code-declared cron schedules exist as rows as soon as the database is migrated."""
    if app_config is None or app_config.label != "jobs":
        return
    from jobs.scheduler import sync_declared

    sync_declared()
