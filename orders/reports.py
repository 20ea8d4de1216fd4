"""The daily sales report: one ``SalesReport`` row per day, a CSV of it, and an email to staff.

A day is a calendar day in the shop's time zone (``settings.TIME_ZONE``). It counts the orders paid
that day that are still paid or fulfilled (cancelled and refunded orders are left out); revenue is
the sum of their totals (VAT included).
"""

import csv
import io
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from orders.models import Order, OrderLine, SalesReport

TOP_PRODUCTS = 5
COUNTED_STATUSES = [Order.Status.PAID, Order.Status.FULFILLED]


def yesterday() -> date:
    return timezone.localdate() - timedelta(days=1)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(day, time.min, tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz)
    return start, end


def build_sales_report(day: date) -> SalesReport:
    """Compute (or recompute) the report of ``day``; there is never more than one per day."""
    start, end = day_bounds(day)
    orders = Order.objects.filter(paid_at__gte=start, paid_at__lt=end, status__in=COUNTED_STATUSES)
    lines = OrderLine.objects.filter(order__in=orders)
    revenue = (orders.aggregate(total=Sum("total"))["total"] or Decimal("0")).quantize(Decimal("0.01"))
    units = lines.aggregate(units=Sum("quantity"))["units"] or 0
    per_product = (
        lines.values("sku", "name")
        .annotate(units=Sum("quantity"), revenue=Sum(F("quantity") * F("unit_price")))
        .order_by("-units", "-revenue", "sku")
    )
    products = [
        {"sku": p["sku"], "name": p["name"], "units": p["units"], "revenue": f"{p['revenue']:.2f}"}
        for p in per_product
    ]
    csv_bytes = render_csv(day, products, orders=orders.count(), revenue=revenue, units=units)
    with transaction.atomic():
        report = SalesReport.objects.select_for_update().filter(date=day).first() or SalesReport(date=day)
        report.orders = orders.count()
        report.revenue = revenue
        report.currency = settings.SHOP_CURRENCY
        report.units = units
        report.top_products = products[:TOP_PRODUCTS]
        report.created_at = timezone.now()
        if report.csv_file:  # replaced, so the day's CSV keeps its name
            report.csv_file.delete(save=False)
        report.csv_file.save(f"sales-{day:%Y-%m-%d}.csv", ContentFile(csv_bytes), save=False)
        report.save()
    return report


def render_csv(day: date, products: list[dict], *, orders: int, revenue: Decimal, units: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "orders", "units", "revenue", "currency"])
    writer.writerow([day.isoformat(), orders, units, f"{revenue:.2f}", settings.SHOP_CURRENCY])
    writer.writerow([])
    writer.writerow(["sku", "name", "units", "revenue"])
    for p in products:
        writer.writerow([p["sku"], p["name"], p["units"], p["revenue"]])
    return out.getvalue().encode()
