from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse


def default_currency() -> str:
    return settings.SHOP_CURRENCY


class ProductQuerySet(models.QuerySet):
    def active(self) -> "ProductQuerySet":
        return self.filter(active=True)


class Product(models.Model):
    """A thing we sell. Stock is reserved by ``orders.services.place_order`` with a conditional UPDATE;
    the check constraint is the last line of defence against overselling."""

    sku = models.CharField("SKU", max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    currency = models.CharField(max_length=3, default=default_currency)
    stock = models.IntegerField(default=0, validators=[MinValueValidator(0)])
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="product_stock_not_negative"),
            models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"

    def get_absolute_url(self) -> str:
        return reverse("product-detail", args=[self.sku])

    @property
    def in_stock(self) -> bool:
        return self.stock > 0


class RateLimitWindow(models.Model):
    """Requests one client made in one fixed window (``shop.throttle``). The counter lives in the
    database so that the limit holds across every web process; rows of past windows are deleted."""

    scope = models.CharField(max_length=50)
    client = models.CharField(max_length=64)
    window = models.BigIntegerField(help_text="Start of the window, in seconds since the epoch.")
    count = models.PositiveIntegerField(default=1)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "client", "window"], name="ratelimit_one_row_per_window")
        ]
        indexes = [models.Index(fields=["scope", "window"], name="ratelimit_scope_window_idx")]

    def __str__(self) -> str:
        return f"{self.scope} {self.client} @{self.window}: {self.count}"
