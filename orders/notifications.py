"""Emails to customers and staff, rendered from templates and sent through Django's email framework
(``EMAIL_URL``). Each customer email is sent once per order: the ``OrderEmail`` row is checked before
and written right after the send."""

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from orders.models import CreditNote, Order, OrderEmail, SalesReport

# Orders a customer is told about: paid and not since cancelled or refunded.
CONFIRMED_STATUSES = {Order.Status.PAID, Order.Status.FULFILLED}


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


def _send_once(order: Order, kind: str, template: str, subject: str) -> bool:
    if OrderEmail.objects.filter(order=order, kind=kind).exists():
        return False
    context = {
        "order": order,
        "lines": list(order.lines.order_by("sku")),
        "order_url": _absolute(order.get_absolute_url()),
        "shop_name": settings.SHOP_NAME,
    }
    _send(template, context, subject, [order.email])
    try:
        with transaction.atomic():
            OrderEmail.objects.create(order=order, kind=kind, recipient=order.email, sent_at=timezone.now())
    except IntegrityError:
        pass  # a concurrent run sent it too: the duplicate the at-least-once contract allows
    return True


def send_order_confirmation(order: Order) -> bool:
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
    )


def send_followup(order: Order) -> bool:
    """Ask how the order went, unless it was cancelled or refunded meanwhile (or sent before)."""
    order.refresh_from_db()
    if order.status not in CONFIRMED_STATUSES:
        return False
    return _send_once(
        order, OrderEmail.Kind.FOLLOWUP, "order_followup", f"How was your order {order.number}?"
    )


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


def send_credit_note(note: CreditNote) -> bool:
    """Email the customer their credit note (the refund's document, PDF attached) once; False if sent
    before. The ``emailed_at`` mark is written right after the send."""
    note.refresh_from_db()
    if note.emailed_at is not None:
        return False
    order = note.order
    context = {
        "order": order,
        "note": note,
        "refund": note.refund,
        "order_url": _absolute(order.get_absolute_url()),
        "shop_name": settings.SHOP_NAME,
    }
    with note.file.open("rb") as handle:
        pdf = handle.read()
    _send(
        "credit_note",
        context,
        f"Your refund for order {order.number} at {settings.SHOP_NAME}",
        [order.email],
        attachments=[(f"{note.number}.pdf", pdf, "application/pdf")],
    )
    CreditNote.objects.filter(pk=note.pk, emailed_at=None).update(emailed_at=timezone.now())
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
