from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Catalog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.models import Job
        from jobs.signals import job_started
        from shop import logging as shop_logging
        from shop import sentry, tracing

        job_started.connect(shop_logging.bind_job, sender=Job, dispatch_uid="shop.logging.bind_job")
        # Each is off unless configured (OTEL_EXPORTER_OTLP_ENDPOINT, SENTRY_DSN).
        tracing.setup()
        sentry.setup()
