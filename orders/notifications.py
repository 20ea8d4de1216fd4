"""Emails to customers and staff, rendered from templates (HTML and plain text) and sent through
Django's email framework (``EMAIL_URL``). Customer emails are transactional: no List-Unsubscribe, no
marketing. Each is sent once per event: its sent-marker (an ``OrderEmail`` row, or ``emailed_at`` on
the shipment or credit note) is checked before and written right after the send, with the order's
``email_sent`` event, by ``orders.services``."""

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from orders import services
from orders.events import Actor
from orders.models import CreditNote, Order, OrderEmail, Payment, SalesReport, Shipment

# Orders a customer is told about: paid and not since cancelled or refunded.
CONFIRMED_STATUSES = {
    Order.Status.PAID,
    Order.Status.FULFILLED,
    Order.Status.PARTIALLY_SHIPPED,
    Order.Status.SHIPPED,
    Order.Status.DELIVERED,
}
# Orders whose customer is asked how it went: every unit left (and maybe arrived).
FOLLOWUP_STATUSES = {Order.Status.SHIPPED, Order.Status.DELIVERED}


def _absolute(path: str) -> str:
    return settings.SHOP_BASE_URL.rstrip("/") + path


def _send(template: str, context: dict, subject: str, to: list[str], attachments=()) -> None:
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"emails/{template}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=to,
        connection=get_connection(timeout=settings.EMAIL_TIMEOUT),
    )
    message.attach_alternative(render_to_string(f"emails/{template}.html", context), "text/html")
    for attachment in attachments:
        message.attach(*attachment)
    message.send()


def _context(order: Order, **extra) -> dict:
    return {
        "order": order,
        "lines": list(order.lines.order_by("sku")),
        "order_url": _absolute(order.get_absolute_url()),
        "shop_name": settings.SHOP_NAME,
        "shop_url": settings.SHOP_BASE_URL,
        **extra,
    }


def _send_once(order: Order, kind: str, template: str, subject: str, actor: Actor | str) -> bool:
    if OrderEmail.objects.filter(order=order, kind=kind).exists():
        return False
    _send(template, _context(order), subject, [order.email])
    services.record_email_sent(order, kind, actor=actor, label=OrderEmail.Kind(kind).label)
    return True


def send_order_confirmation(order: Order, *, actor: Actor | str) -> bool:
    """Email the order confirmation (HTML and plain text); False if it was sent before, or if the
    order was cancelled or refunded before it went out."""
    order.refresh_from_db()
    if order.status not in CONFIRMED_STATUSES:
        return False
    return _send_once(
        order,
        OrderEmail.Kind.CONFIRMATION,
        "order_confirmation",
        f"Your order {order.number} at {settings.SHOP_NAME}",
        actor,
    )


def send_followup(order: Order, *, actor: Actor | str) -> bool:
    """Ask how the order went: only once everything shipped (the job waits FOLLOWUP_DELAY after that)
    or arrived. Checked now, when the job runs: a cancelled or refunded order gets nothing."""
    order.refresh_from_db()
    if order.status not in FOLLOWUP_STATUSES:
        return False
    payment = order.latest_payment()
    if payment is not None and payment.status == Payment.Status.REFUNDED:
        return False  # shipped, then returned and refunded in full: nothing to ask about
    return _send_once(
        order, OrderEmail.Kind.FOLLOWUP, "order_followup", f"How was your order {order.number}?", actor
    )


def send_cancellation(order: Order, *, actor: Actor | str) -> bool:
    """Tell the customer their order is cancelled and the money on its way back, once."""
    order.refresh_from_db()
    if order.status != Order.Status.CANCELLED:
        return False
    return _send_once(
        order,
        OrderEmail.Kind.CANCELLATION,
        "order_cancelled",
        f"Your order {order.number} at {settings.SHOP_NAME} is cancelled",
        actor,
    )


def send_shipping(shipment: Shipment, *, actor: Actor | str) -> bool:
    """Tell the customer a parcel left, with its tracking link, once per shipment."""
    shipment.refresh_from_db()
    if shipment.emailed_at is not None or shipment.shipped_at is None:
        return False
    order = shipment.order
    order.refresh_from_db()
    items = list(shipment.lines.select_related("line").order_by("line__sku"))
    context = _context(
        order, shipment=shipment, items=items, complete=order.status != Order.Status.PARTIALLY_SHIPPED
    )
    _send("order_shipped", context, f"Your order {order.number} has shipped", [order.email])
    services.record_document_email_sent(
        order, Shipment, shipment.pk, actor=actor, email="shipping", label="Shipping"
    )
    return True


def send_sales_report(report: SalesReport) -> bool:
    """Email the report with its CSV to ``settings.REPORT_RECIPIENTS`` once; False if sent before or
    nobody is to receive it."""
    if report.emailed_at is not None or not settings.REPORT_RECIPIENTS:
        return False
    attachments = []
    if report.csv_file:
        with report.csv_file.open("rb") as f:
            attachments.append((f"sales-{report.date}.csv", f.read(), "text/csv"))
    _send(
        "sales_report",
        {"report": report, "shop_name": settings.SHOP_NAME},
        f"{settings.SHOP_NAME} sales of {report.date:%Y-%m-%d}",
        list(settings.REPORT_RECIPIENTS),
        attachments,
    )
    SalesReport.objects.filter(pk=report.pk).update(emailed_at=timezone.now())
    report.refresh_from_db()
    return True


def send_credit_note(note: CreditNote, *, actor: Actor | str) -> bool:
    """Email the customer their credit note (the refund's document, PDF attached) once; False if sent
    before. The ``emailed_at`` mark is written right after the send."""
    note.refresh_from_db()
    if note.emailed_at is not None:
        return False
    order = note.order
    context = _context(order, note=note, refund=note.refund)
    with note.file.open("rb") as handle:
        pdf = handle.read()
    _send(
        "credit_note",
        context,
        f"Your refund for order {order.number} at {settings.SHOP_NAME}",
        [order.email],
        attachments=[(f"{note.number}.pdf", pdf, "application/pdf")],
    )
    services.record_document_email_sent(
        order, CreditNote, note.pk, actor=actor, email="credit_note", label="Refund and credit note"
    )
    return True


def send_dispute_alert(order: Order) -> bool:
    """Tell staff (``settings.MANAGERS``, else ``PAYMENT_ALERT_EMAILS``) that a customer's bank opened a
    dispute. No customer data beyond the order number and its admin link."""
    recipients = list(settings.PAYMENT_ALERT_EMAILS) or [address for _, address in settings.MANAGERS]
    if not recipients:
        return False
    context = {
        "order": order,
        "admin_url": _absolute(reverse("admin:orders_order_change", args=[order.pk])),
        "shop_name": settings.SHOP_NAME,
    }
    _send("dispute_alert", context, f"Payment dispute on order {order.number}", recipients)
    return True
