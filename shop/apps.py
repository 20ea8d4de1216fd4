from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Catalog"
    default_auto_field = "django.db.models.BigAutoField"
