"""The customer emails: confirmation, follow-up, and every customer email's form (HTML and text, once)."""

import socket
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from django.core import mail

from jobs.api import enqueue
from jobs.models import Job, JobStatus
from jobs.testing import run_jobs
from orders.models import OrderEmail, Payment
from orders.services import cancel_order, refund, request_refund

pytestmark = pytest.mark.django_db


def run_confirmation(order) -> Job:
    run_jobs(max_jobs=1)  # the confirmation: high priority, the only job due
    return Job.objects.get(unique_key=f"order:{order.id}:confirmation")


def test_confirmation_is_html_and_text_with_number_lines_total_and_link(place, settings):
    order = place()
    job = run_confirmation(order)
    assert job.status == JobStatus.SUCCEEDED
    (message,) = mail.outbox
    assert message.to == ["ada@example.com"]
    assert order.number in message.subject
    link = f"{settings.SHOP_BASE_URL}/orders/{order.token}/"
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    for body in (message.body, html):
        assert order.number in body
        assert "Coffee mug" in body and "MUG" in body
        assert "23.80 EUR" in body  # 2 x 11.90
        assert link in body
    assert OrderEmail.objects.filter(order=order, kind="confirmation").count() == 1


def test_confirmation_job_run_twice_sends_one_email(place):
    order = place()
    run_confirmation(order)
    again = enqueue("send_order_confirmation", {"order_id": order.id})
    run_jobs()
    assert Job.objects.get(id=again.id).result == {"sent": False}
    assert len([m for m in mail.outbox if "Your order" in m.subject]) == 1


def test_confirmation_releases_invoice_and_inventory_and_then_fulfilment(place):
    order = place()
    run_jobs()
    order.refresh_from_db()
    assert order.status == "fulfilled"
    assert order.invoice.number == f"INV-{order.number}"
    assert order.inventory_sync.target == "local"


def test_followup_is_sent_once(place, ship):
    order = place()
    run_jobs()
    ship(order)
    run_jobs()  # the shipping email
    mail.outbox.clear()
    for _ in range(2):
        job = enqueue("send_followup_email", {"order_id": order.id})
        run_jobs()
    (message,) = mail.outbox
    assert order.number in message.subject and message.alternatives
    assert Job.objects.get(id=job.id).result == {"sent": False}


def test_no_confirmation_goes_out_for_an_order_cancelled_before_it_was_sent(place):
    order = place()
    cancel_order(order, actor="staff:grace")
    job = run_confirmation(order)
    assert job.status == JobStatus.SUCCEEDED and job.result == {"sent": False}
    assert not mail.outbox


@pytest.mark.parametrize("undo", [cancel_order, refund], ids=["cancelled", "refunded"])
def test_followup_does_nothing_for_an_order_cancelled_or_refunded_meanwhile(place, undo):
    order = place()
    undo(order, actor="staff:grace")
    job = enqueue("send_followup_email", {"order_id": order.id})
    run_jobs()
    assert Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED
    assert not any("How was" in m.subject for m in mail.outbox)
    assert not OrderEmail.objects.filter(order=order, kind="followup").exists()


def test_no_followup_for_a_shipped_order_returned_and_refunded_in_full(place, ship):
    order = place()
    run_jobs()
    ship(order)
    run_jobs()
    request_refund(order, actor="staff:grace", reason="Returned")
    run_jobs()
    assert order.latest_payment().status == Payment.Status.REFUNDED
    job = enqueue("send_followup_email", {"order_id": order.id})
    run_jobs()
    assert Job.objects.get(id=job.id).result == {"sent": False}
    assert not any("How was" in m.subject for m in mail.outbox)


class Collector:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    with socket.socket() as s:  # a free port (aiosmtpd's readiness check needs a real one)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    yield collector, port
    controller.stop()


def test_confirmation_goes_through_a_real_smtp_server(place, settings, smtp_server):
    collector, port = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    order = place()
    assert run_confirmation(order).status == JobStatus.SUCCEEDED
    (envelope,) = collector.messages
    assert envelope.rcpt_tos == ["ada@example.com"]
    message = message_from_bytes(envelope.content)
    assert order.number in message["Subject"]
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message.walk()
        if not part.is_multipart()
    }
    assert order.number in parts["text/plain"] and order.number in parts["text/html"]


def test_every_customer_email_is_html_and_text_with_the_shop_and_no_unsubscribe_and_goes_once(
    place, ship, settings
):
    """Confirmation, shipping, follow-up, cancellation and refund (credit note): each an HTML and a
    plain-text body naming the shop and linking back to it, transactional (no List-Unsubscribe), and
    sent once however often its job runs again."""
    settings.SHOP_NAME = "Lovelace Teas"
    settings.SHOP_BASE_URL = "https://teas.example"
    shipped, cancelled = place(), place()
    run_jobs()
    shipment = ship(shipped)
    followup = Job.objects.get(unique_key=f"order:{shipped.id}:followup")
    Job.objects.filter(pk=followup.pk).update(run_at=followup.created_at)
    cancel_order(cancelled, actor="customer")
    run_jobs()
    refund_row = cancelled.refunds.get()
    for job_type, payload in [
        ("send_order_confirmation", {"order_id": shipped.id}),
        ("send_shipping_email", {"shipment_id": shipment.pk}),
        ("send_followup_email", {"order_id": shipped.id}),
        ("send_cancellation_email", {"order_id": cancelled.id}),
        ("issue_credit_note", {"refund_id": refund_row.pk}),
    ]:
        enqueue(job_type, payload)
    run_jobs()

    def kind(message) -> str:
        for words, name in [
            ("has shipped", "shipping"),
            ("How was", "followup"),
            ("is cancelled", "cancellation"),
            ("Your refund", "credit_note"),
            ("Your order", "confirmation"),
        ]:
            if words in message.subject:
                return name
        raise AssertionError(message.subject)

    sent = sorted(kind(m) for m in mail.outbox)  # both orders were confirmed when paid
    assert sent == sorted(
        ["confirmation", "confirmation", "shipping", "followup", "cancellation", "credit_note"]
    )
    for message in mail.outbox:
        (html, mimetype), *_ = message.alternatives
        assert mimetype == "text/html" and "<html" in html.lower(), kind(message)
        for body in (message.body, html):
            assert "Lovelace Teas" in body and "https://teas.example" in body, kind(message)
        assert "</" not in message.body, kind(message)  # the plain part is not HTML
        headers = message.message()
        assert headers["List-Unsubscribe"] is None and "List-Unsubscribe" not in message.extra_headers
