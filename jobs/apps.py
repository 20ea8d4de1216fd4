from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Background jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every installed app's jobs.py declares its job types with @job; import them all so that
        # any process (web, worker, shell) knows every type.
        autodiscover_modules("jobs")
        from jobs import checks  # noqa: F401  (registers the system checks)
        from jobs.scheduler import register_declared_schedules
        from jobs.staff import register_known_queues

        post_migrate.connect(register_declared_schedules, dispatch_uid="jobs.register_declared_schedules")
        post_migrate.connect(register_known_queues, dispatch_uid="jobs.register_known_queues")

        if getattr(settings, "TASKS", None):
            # Django's Tasks API on our queue: the backends register their configured tasks' job types
            # (rate limits among them) before this process claims anything. Only then is django_tasks
            # imported at all.
            from jobs.tasks_backend import create_backends

            create_backends()
