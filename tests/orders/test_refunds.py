"""Refunds are rows: whole, by line or by amount, never more than was captured (also when staff race),
the gateway called by a job (a crash or a timeout never refunds twice), a failed one visible and
retried, each succeeded one with a gap-free numbered credit note, an email and an order.refunded event."""

import datetime
import io
import threading
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection
from django.utils import timezone
from pypdf import PdfReader

from jobs.models import Job
from jobs.testing import run_jobs
from orders import invoices, services
from orders.gateways import FakeGateway, GatewayError
from orders.models import (
    CreditNote,
    DocumentSequence,
    FakeGatewayRefund,
    Order,
    OrderMessage,
    Payment,
    Refund,
    WebhookEndpoint,
)
from shop.models import Product
from tests.factories import ProductFactory
from tests.utils import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def order(place):
    ProductFactory(sku="A", name="Enamel mug", price="10.00", stock=10)
    ProductFactory(sku="B", name="Tea", price="4.50", stock=10)
    return place({"A": 2, "B": 3})  # 33.50


def refunded(order) -> Decimal:
    return sum((r.amount for r in Refund.objects.filter(order=order, status="succeeded")), Decimal("0.00"))


def test_a_partial_refund_is_a_row_with_its_credit_note_email_and_event(order):
    WebhookEndpoint.objects.create(url="http://hooks.example/", events=["order.refunded"])
    refund = services.request_refund(order, actor="staff:ada", reason="Scratched mug", amount=Decimal("5.00"))
    assert refund.status == Refund.Status.PENDING and Job.objects.filter(type="process_refund").count() == 1
    mail.outbox.clear()
    run_jobs()
    refund.refresh_from_db()
    order.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED and refund.gateway_reference.startswith("re_")
    assert order.status == Order.Status.FULFILLED  # a partial refund leaves the order as it was
    assert order.payments.get().status == Payment.Status.PARTIALLY_REFUNDED
    note = CreditNote.objects.get(refund=refund)
    year = timezone.localdate().year
    assert note.number == f"CN-{year}-00001" and note.amount == Decimal("5.00")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(note.file.read())).pages)
    assert f"Credit note CN-{year}-00001" in text and "5.00 EUR" in text and order.invoice.number in text
    (email,) = [m for m in mail.outbox if "refund" in m.subject.lower()]
    assert email.to == [order.email] and email.attachments[0][0] == f"{note.number}.pdf"
    assert note.emailed_at is not None or CreditNote.objects.get(pk=note.pk).emailed_at is not None
    message = OrderMessage.objects.get(order=order, event="order.refunded")
    assert message.body["refund"]["amount"] == "5.00" and message.body["data"]["number"] == order.number


def test_refunds_by_line_add_up_to_a_whole_refund_and_number_their_credit_notes_without_gaps(order):
    services.request_refund(order, actor="staff:ada", reason="Returned", lines={"A": 1})
    services.request_refund(order, actor="staff:ada", reason="Returned", lines={"B": 3})
    run_jobs()
    services.request_refund(order, actor="staff:ada", reason="Returned", lines={"A": 1})
    run_jobs()
    order.refresh_from_db()
    assert refunded(order) == Decimal("33.50")
    assert order.status == Order.Status.REFUNDED
    assert order.payments.get().status == Payment.Status.REFUNDED
    year = timezone.localdate().year
    numbers = sorted(CreditNote.objects.values_list("number", flat=True))
    assert numbers == [f"CN-{year}-0000{n}" for n in (1, 2, 3)]
    with pytest.raises(services.InvalidRefund, match="At most 0 of A"):
        services.request_refund(order, actor="staff:ada", reason="Again", lines={"A": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": Decimal("33.51")}, "At most 33.50"),
        ({"amount": Decimal("0")}, "Nothing is left"),
        ({"lines": {"A": 3}}, "At most 2 of A"),
        ({"lines": {"Z": 1}}, "no line Z"),
        ({"lines": {"A": 0}}, "At most 2 of A"),
        ({"reason": " "}, "Give a reason"),
    ],
)
def test_a_refund_beyond_what_is_left_or_without_reason_is_refused_and_stores_nothing(order, kwargs, message):
    kwargs = {"reason": "why", **kwargs}
    with pytest.raises(services.InvalidRefund, match=message):
        services.request_refund(order, actor="staff:ada", **kwargs)
    assert not Refund.objects.exists() and not Job.objects.filter(type="process_refund").exists()


def test_an_unpaid_order_has_nothing_to_refund(place):
    ProductFactory(sku="A", stock=5)
    declined = place({"A": 1}, token="tok_chargeDeclined")
    with pytest.raises(services.InvalidRefund, match="no captured payment"):
        services.request_refund(declined, actor="staff:ada", reason="x")


@pytest.mark.django_db(transaction=True)
def test_staff_racing_to_refund_never_exceed_what_was_captured(order):
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def refund_ten() -> None:
        try:
            barrier.wait()
            services.request_refund(order, actor="staff:ada", reason="race", amount=Decimal("10.00"))
            outcomes.append("ok")
        except services.InvalidRefund:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=refund_ten) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["ok", "ok", "ok", "refused"]  # 3 x 10.00 <= 33.50 < 4 x 10.00
    run_jobs()
    assert refunded(order) == Decimal("30.00")
    assert sum(FakeGatewayRefund.objects.values_list("amount", flat=True)) == Decimal("30.00")


@pytest.mark.django_db(transaction=True)
def test_credit_notes_issued_at_once_are_numbered_without_gaps_even_when_one_rolls_back(place, monkeypatch):
    ProductFactory(sku="A", price="10.00", stock=10)
    refunds = []
    for _ in range(5):
        order = place({"A": 1})
        refund = services.request_refund(order, actor="staff:ada", reason="Returned")
        refunds.append(services.process_refund(refund, actor="staff:ada"))
    assert {r.status for r in refunds} == {Refund.Status.SUCCEEDED}
    render = invoices.render_credit_note
    doomed = refunds[2]

    def render_or_fail(refund, **kwargs):
        if refund.pk == doomed.pk:  # after its number was taken, inside the same transaction
            raise RuntimeError("the PDF could not be written")
        return render(refund, **kwargs)

    monkeypatch.setattr(invoices, "render_credit_note", render_or_fail)
    barrier = threading.Barrier(len(refunds))
    failed: list[int] = []

    def issue(refund: Refund) -> None:
        try:
            barrier.wait()
            invoices.issue_credit_note(refund, actor="system")
        except RuntimeError:
            failed.append(refund.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(refund,)) for refund in refunds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    year = timezone.localdate().year
    assert failed == [doomed.pk] and not CreditNote.objects.filter(refund=doomed).exists()
    numbers = sorted(CreditNote.objects.values_list("number", flat=True))
    assert numbers == [f"CN-{year}-{n:05d}" for n in range(1, 5)]  # the rolled-back number was given back
    monkeypatch.setattr(invoices, "render_credit_note", render)
    assert invoices.issue_credit_note(doomed, actor="system").number == f"CN-{year}-00005"


def test_credit_note_numbers_start_again_each_year(order, monkeypatch):
    first = services.request_refund(order, actor="staff:ada", reason="Returned", lines={"A": 1})
    run_jobs()
    this_year = timezone.localdate().year
    assert CreditNote.objects.get(refund=first).number == f"CN-{this_year}-00001"
    new_year = datetime.date(this_year + 1, 1, 1)
    monkeypatch.setattr(invoices.timezone, "localdate", lambda *args, **kwargs: new_year)
    second = services.request_refund(order, actor="staff:ada", reason="Returned", lines={"A": 1})
    third = services.request_refund(order, actor="staff:ada", reason="Returned", lines={"B": 1})
    run_jobs()
    assert CreditNote.objects.get(refund=second).number == f"CN-{this_year + 1}-00001"
    assert CreditNote.objects.get(refund=third).number == f"CN-{this_year + 1}-00002"
    assert DocumentSequence.objects.get(kind="credit_note", year=this_year).last == 1


class TimeoutAfterRefundGateway(FakeGateway):
    """Refunds, then loses the answer (a timeout): the retry of the job must not refund again."""

    lost = []

    def refund(self, reference, idempotency_key, amount=None):
        result = super().refund(reference, idempotency_key, amount)
        if not self.lost:
            self.lost.append(idempotency_key)
            raise GatewayError("read timed out")
        return result


def test_a_refund_whose_answer_was_lost_is_retried_without_refunding_twice(order, settings):
    settings.PAYMENT_GATEWAY = "tests.orders.test_refunds.TimeoutAfterRefundGateway"
    TimeoutAfterRefundGateway.lost.clear()
    refund = services.request_refund(order, actor="staff:ada", reason="x", amount=Decimal("7.00"))

    def settled() -> bool:
        run_jobs()  # the retry is due after a short backoff
        refund.refresh_from_db()
        return refund.status != Refund.Status.PENDING

    wait_for(settled, message="the refund settled by the job's retry")
    assert TimeoutAfterRefundGateway.lost and refund.status == Refund.Status.SUCCEEDED
    assert FakeGatewayRefund.objects.count() == 1 and refunded(order) == Decimal("7.00")
    job = Job.objects.get(type="process_refund")
    assert job.attempts == 2 and "timed out" in job.errors[0]["message"]


class RefusingGateway(FakeGateway):
    refuse = True

    def refund(self, reference, idempotency_key, amount=None):
        if self.refuse:
            from orders.gateways import RefundResult

            return RefundResult("re_refused", amount, "failed", "The card was closed.")
        return super().refund(reference, idempotency_key, amount)


def test_a_failed_refund_is_visible_and_staff_retry_it(order, settings, admin_client):
    settings.PAYMENT_GATEWAY = "tests.orders.test_refunds.RefusingGateway"
    refund = services.request_refund(order, actor="staff:ada", reason="x", amount=Decimal("7.00"))
    run_jobs()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.FAILED and refund.failure_reason == "The card was closed."
    page = admin_client.get(f"/admin/orders/order/{order.pk}/change/")
    assert b"The card was closed." in page.content
    RefusingGateway.refuse = False
    try:
        admin_client.post(
            "/admin/orders/refund/", {"action": "retry_failed", "_selected_action": [refund.pk]}
        )
        run_jobs()
    finally:
        RefusingGateway.refuse = True
    assert refunded(order) == Decimal("7.00")
    assert Refund.objects.filter(status="failed").count() == 1  # the failure stays on record


def test_staff_refund_lines_from_admin_with_a_reason(order, admin_client):
    url = f"/admin/orders/order/{order.pk}/refund/"
    page = admin_client.get(url)
    assert page.status_code == 200 and b"33.50" in page.content
    too_many = admin_client.post(url, {"reason": "Broken", "line_A": "5"})
    assert too_many.status_code == 400 and not Refund.objects.exists()
    both = admin_client.post(url, {"reason": "Broken", "line_A": "1", "amount": "3.00"})
    assert both.status_code == 400 and b"not both" in both.content
    done = admin_client.post(url, {"reason": "Broken", "line_A": "1"})
    assert done.status_code == 302
    refund = Refund.objects.get()
    user = User.objects.get()
    assert refund.amount == Decimal("10.00") and refund.lines == {"A": 1}
    assert refund.actor == f"staff:{user.username}" and refund.reason == "Broken"


def test_staff_refund_an_amount_then_the_whole_rest_from_admin(order, admin_client):
    url = f"/admin/orders/order/{order.pk}/refund/"
    no_reason = admin_client.post(url, {"reason": "", "amount": "3.00"})
    assert no_reason.status_code == 400 and not Refund.objects.exists()
    assert admin_client.post(url, {"reason": "Late delivery", "amount": "3.00"}).status_code == 302
    assert admin_client.post(url, {"reason": "Returned everything"}).status_code == 302
    run_jobs()
    first, rest = Refund.objects.order_by("id")
    assert (first.amount, first.lines, first.reason) == (Decimal("3.00"), {}, "Late delivery")
    assert (rest.amount, rest.reason) == (Decimal("30.50"), "Returned everything")
    assert refunded(order) == Decimal("33.50") and CreditNote.objects.count() == 2
    order.refresh_from_db()
    assert order.status == Order.Status.REFUNDED
    assert order.payments.get().status == Payment.Status.REFUNDED


def test_a_whole_refund_of_a_paid_order_gives_the_stock_back(place):
    ProductFactory(sku="A", price="10.00", stock=5)
    order = place({"A": 2})
    Job.objects.filter(type="mark_order_fulfilled").delete()  # not shipped
    services.refund(order, actor="staff:ada")
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.REFUNDED and Product.objects.get(sku="A").stock == 5
