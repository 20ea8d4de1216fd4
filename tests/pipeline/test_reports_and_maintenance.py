"""daily_sales_report, reconcile_pending_payments and purge_idempotency_keys."""

import csv
import io
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from jobs.api import enqueue
from jobs.models import CronSchedule, Job
from jobs.scheduler import sync_declared
from jobs.testing import run_jobs
from orders.models import FakeGatewayCharge, IdempotencyKey, Order, SalesReport
from orders.services import cancel_order
from tests.factories import OrderFactory, OrderLineFactory, ProductFactory

pytestmark = pytest.mark.django_db

DAY = date(2026, 3, 10)


def paid_order(at: datetime, lines: list[tuple], status="paid") -> Order:
    order = OrderFactory(status=status, paid_at=at, total=sum(p.price * q for p, q in lines))
    for product, quantity in lines:
        OrderLineFactory(order=order, product=product, quantity=quantity)
    return order


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=timezone.get_current_timezone())


@pytest.fixture
def sales():
    mug = ProductFactory(sku="MUG", name="Mug", price=Decimal("10.00"))
    tea = ProductFactory(sku="TEA", name="Tea", price=Decimal("4.00"))
    paid_order(local(DAY, 0, 0), [(mug, 1), (tea, 5)])  # first moment of the day, shop time
    paid_order(local(DAY, 23, 59), [(mug, 2)], status="fulfilled")
    paid_order(local(DAY, 12), [(mug, 9)], status="refunded")  # refunded: not counted
    paid_order(local(DAY, 0, 0) - timedelta(seconds=1), [(tea, 1)])  # the day before
    paid_order(local(DAY + timedelta(days=1), 0, 0), [(tea, 1)])  # the day after
    return mug, tea


def run_report(day: date | None = None) -> Job:
    job = enqueue("daily_sales_report", {"date": day.isoformat()} if day else {})
    run_jobs()
    return Job.objects.get(id=job.id)


def test_report_counts_orders_paid_that_day_in_the_shop_time_zone(sales, settings):
    settings.REPORT_RECIPIENTS = ["boss@example.com"]
    run_report(DAY)
    report = SalesReport.objects.get(date=DAY)
    assert (report.orders, report.units, report.revenue) == (2, 8, Decimal("50.00"))
    assert report.top_products == [
        {"sku": "TEA", "name": "Tea", "units": 5, "revenue": "20.00"},
        {"sku": "MUG", "name": "Mug", "units": 3, "revenue": "30.00"},
    ]


def test_report_writes_a_csv_and_emails_it_to_the_recipients(sales, settings):
    settings.REPORT_RECIPIENTS = ["boss@example.com", "books@example.com"]
    run_report(DAY)
    report = SalesReport.objects.get(date=DAY)
    with report.csv_file.open("rb") as f:
        rows = list(csv.reader(io.StringIO(f.read().decode())))
    assert rows[:2] == [
        ["date", "orders", "units", "revenue", "currency"],
        ["2026-03-10", "2", "8", "50.00", "EUR"],
    ]
    assert ["TEA", "Tea", "5", "20.00"] in rows
    (message,) = mail.outbox
    assert message.to == ["boss@example.com", "books@example.com"]
    assert "2026-03-10" in message.subject and "Revenue: 50.00 EUR" in message.body
    assert message.attachments[0][0] == "sales-2026-03-10.csv"
    assert report.emailed_at is not None


def test_running_the_report_twice_for_a_day_keeps_one_report_and_one_email(sales, settings, tmp_path):
    settings.REPORT_RECIPIENTS = ["boss@example.com"]
    run_report(DAY)
    run_report(DAY)
    assert SalesReport.objects.filter(date=DAY).count() == 1
    assert len(mail.outbox) == 1
    assert [p.name for p in (tmp_path / "media" / "reports").iterdir()] == [
        SalesReport.objects.get().csv_file.name.split("/")[-1]
    ]


def test_report_without_a_date_is_for_yesterday_and_empty_days_are_reported(settings):
    settings.REPORT_RECIPIENTS = []
    job = run_report()
    yesterday = timezone.localdate() - timedelta(days=1)
    assert job.result == {"date": yesterday.isoformat(), "orders": 0, "emailed": False}
    report = SalesReport.objects.get(date=yesterday)
    assert (report.orders, report.units, report.revenue, report.top_products) == (0, 0, Decimal("0"), [])
    assert not mail.outbox


def test_report_is_viewable_in_admin(sales, admin_client):
    run_report(DAY)
    report = SalesReport.objects.get()
    page = admin_client.get(f"/admin/orders/salesreport/{report.pk}/change/").content.decode()
    assert "50.00" in page and "Tea" in page
    response = admin_client.get(f"/admin/orders/salesreport/{report.pk}/csv/")
    assert response.status_code == 200 and b"TEA" in b"".join(response.streaming_content)


def test_daily_report_schedule_runs_at_midnight_shop_time():
    sync_declared()
    schedule = CronSchedule.objects.get(name="daily_sales_report")
    due = timezone.localtime(schedule.next_run_at)
    assert (due.hour, due.minute) == (0, 0)
    assert schedule.time_zone == "Europe/Berlin"


# -- reconcile_pending_payments ----------------------------------------------------------------------


def pending_order(product, *, minutes_ago: int, charged: bool) -> Order:
    order = OrderFactory(total=product.price, stock_reserved=True)
    OrderLineFactory(order=order, product=product, quantity=1)
    product.stock -= 1
    product.save()
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    if charged:  # the charge went through, the commit that should have recorded it did not
        FakeGatewayCharge.objects.create(
            idempotency_key=order.number,
            reference=f"ch_{order.pk}",
            token="tok_visa",
            amount=order.total,
            currency=order.currency,
            succeeded=True,
        )
    return order


def test_stuck_pending_orders_are_settled_with_the_gateway(product):
    charged = pending_order(product, minutes_ago=30, charged=True)
    lost = pending_order(product, minutes_ago=30, charged=False)
    job = enqueue("reconcile_pending_payments", {})
    run_jobs(max_jobs=1)
    assert Job.objects.get(id=job.id).result == {"paid": 1, "payment_failed": 1, "unreachable": 0}
    charged.refresh_from_db()
    lost.refresh_from_db()
    assert charged.status == "paid" and charged.stock_reserved
    assert lost.status == "payment_failed" and not lost.stock_reserved
    product.refresh_from_db()
    assert product.stock == 19  # the lost order's unit came back
    assert Job.objects.filter(type="send_order_confirmation", payload={"order_id": charged.id}).exists()


def test_a_crashed_checkout_is_settled_within_two_minutes(product):
    crashed = pending_order(product, minutes_ago=2, charged=True)
    job = enqueue("reconcile_pending_payments", {})
    run_jobs(max_jobs=1)
    assert Job.objects.get(id=job.id).result == {"paid": 1, "payment_failed": 0, "unreachable": 0}
    crashed.refresh_from_db()
    assert crashed.status == "paid"


def test_recent_pending_orders_are_left_to_their_checkout(product):
    order = pending_order(product, minutes_ago=0, charged=False)
    enqueue("reconcile_pending_payments", {})
    run_jobs(max_jobs=1)
    order.refresh_from_db()
    assert order.status == "pending_payment"


def test_a_pending_order_whose_request_holds_its_key_is_left_to_it(product):
    order = pending_order(product, minutes_ago=5, charged=False)
    IdempotencyKey.objects.create(
        key="k",
        fingerprint="x",
        order=order,
        recovery_point="charge_attempted",
        lease="live",
        locked_at=timezone.now(),
    )
    enqueue("reconcile_pending_payments", {})
    run_jobs(max_jobs=1)
    order.refresh_from_db()
    assert order.status == "pending_payment"
    IdempotencyKey.objects.update(locked_at=timezone.now() - timedelta(minutes=1))  # its request died
    enqueue("reconcile_pending_payments", {})
    run_jobs(max_jobs=1)
    order.refresh_from_db()
    assert order.status == "payment_failed" and not order.stock_reserved


def test_reconcile_and_purge_schedules_are_registered(settings):
    sync_declared()
    assert (
        CronSchedule.objects.get(name="reconcile_pending_payments").expression == settings.RECONCILE_SCHEDULE
    )
    assert CronSchedule.objects.get(name="purge_idempotency_keys").job_type == "purge_idempotency_keys"


def test_purge_job_forgets_idempotency_keys_older_than_a_day():
    old = IdempotencyKey.objects.create(key="old", fingerprint="x")
    IdempotencyKey.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))
    IdempotencyKey.objects.create(key="new", fingerprint="x")
    job = enqueue("purge_idempotency_keys", {})
    run_jobs()
    assert Job.objects.get(id=job.id).result == {"deleted": 1}
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


def test_followup_of_a_cancelled_order_sends_nothing_even_when_due(place):
    order = place()
    cancel_order(order, actor="staff:grace")
    Job.objects.filter(type="send_followup_email").update(run_at=timezone.now())
    run_jobs()
    assert not any("How was" in m.subject for m in mail.outbox)
