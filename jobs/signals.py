from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate)
def register_declared_schedules(sender, app_config=None, **kwargs) -> None:
    """Code-declared cron schedules exist as rows as soon as the database is migrated."""
    if app_config is None or app_config.label != "jobs":
        return
    from jobs.scheduler import sync_declared

    sync_declared()
