"""What paying for an order enqueues, atomically with the status change."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from jobs.api import HIGH
from jobs.models import Job, JobStatus
from jobs.scheduler import _declared
from jobs.testing import assert_enqueued, run_jobs
from orders import pipeline
from orders.gateways import ChargeResult
from orders.models import Order, OrderMessage, WebhookEndpoint
from orders.services import mark_paid
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db


def job(step: str, order: Order) -> Job:
    return Job.objects.get(unique_key=f"order:{order.id}:{step}")


def test_paid_order_enqueues_confirmation_with_high_priority(place):
    order = place()
    confirmation = assert_enqueued("send_order_confirmation", count=1, order_id=order.id)
    assert confirmation.priority == HIGH
    assert confirmation.status == JobStatus.PENDING
    assert confirmation.unique_key == f"order:{order.id}:confirmation"


def test_invoice_and_inventory_wait_for_the_confirmation(place):
    order = place()
    confirmation = job("confirmation", order)
    for step in ("invoice", "inventory"):
        child = job(step, order)
        assert child.status == JobStatus.BLOCKED
        assert list(child.parents.all()) == [confirmation]
    assert job("invoice", order).type == "generate_invoice"
    assert job("inventory", order).type == "sync_inventory"


def test_fulfilment_waits_for_both_invoice_and_inventory(place):
    order = place()
    fulfilled = job("fulfilled", order)
    assert fulfilled.type == "mark_order_fulfilled"
    assert fulfilled.status == JobStatus.BLOCKED and fulfilled.waiting_on == 2
    assert set(fulfilled.parents.all()) == {job("invoice", order), job("inventory", order)}


def test_followup_is_enqueued_followup_delay_after_the_order_shipped_not_at_payment(place, ship, settings):
    order = place()
    assert not Job.objects.filter(type="send_followup_email").exists()
    run_jobs()
    before = timezone.now()
    ship(order)
    followup = assert_enqueued("send_followup_email", count=1, order_id=order.id)
    expected = timedelta(seconds=settings.FOLLOWUP_DELAY)
    assert settings.FOLLOWUP_DELAY == 24 * 3600
    assert before + expected <= followup.run_at <= timezone.now() + expected


def test_paid_webhook_is_enqueued_once_per_subscribed_active_endpoint(place):
    both = WebhookEndpoint.objects.create(url="http://a.example/", events=["order.paid", "order.fulfilled"])
    paid_only = WebhookEndpoint.objects.create(url="http://b.example/", events=["order.paid"])
    WebhookEndpoint.objects.create(url="http://c.example/", events=["order.fulfilled"])
    WebhookEndpoint.objects.create(url="http://d.example/", events=["order.paid"], active=False)
    order = place()
    message = OrderMessage.objects.get(order=order, event="order.paid")
    jobs = Job.objects.filter(type="deliver_webhook").order_by("id")
    assert [j.payload for j in jobs] == [
        {"endpoint_id": both.id, "event": "order.paid", "order_id": order.id, "message_id": message.id},
        {"endpoint_id": paid_only.id, "event": "order.paid", "order_id": order.id, "message_id": message.id},
    ]
    assert jobs[0].unique_key == f"webhook:{both.id}:order.paid:order:{order.id}"


def test_declined_order_enqueues_nothing(place):
    place(token="tok_chargeDeclined")
    assert not Job.objects.exists()


def test_marking_an_order_paid_twice_enqueues_the_pipeline_once(place):
    order = place()
    charge = ChargeResult(True, "ch_x", order.total, order.currency)
    assert mark_paid(order, charge, actor="system") is False
    assert Job.objects.filter(type="send_order_confirmation").count() == 1
    assert Job.objects.count() == 4  # confirmation, invoice, inventory, ready to ship


def test_enqueuing_the_pipeline_again_adds_no_job(place):
    order = place()
    before = Job.objects.count()
    with transaction.atomic():
        pipeline.on_order_paid(order)
    assert Job.objects.count() == before


def test_pipeline_rolls_back_with_the_status_change():
    """The jobs are enqueued in the transaction that marks the order paid: no paid order, no jobs."""
    order = OrderFactory(total="10.00")
    charge = ChargeResult(True, "ch_x", order.total, order.currency)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert mark_paid(order, charge, actor="system") is True
        assert Job.objects.count() == 4
        raise RuntimeError("the commit failed")
    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT
    assert not Job.objects.exists()


def test_schedules_are_declared_for_report_reconciliation_and_key_purge(settings):
    assert _declared["daily_sales_report"]["expression"] == "0 0 * * *"
    assert _declared["daily_sales_report"]["time_zone"] == settings.TIME_ZONE
    assert _declared["daily_sales_report"]["job_type"] == "daily_sales_report"
    assert _declared["reconcile_pending_payments"]["expression"] == settings.RECONCILE_SCHEDULE
    assert _declared["purge_idempotency_keys"]["job_type"] == "purge_idempotency_keys"
