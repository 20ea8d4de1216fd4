"""PDF invoices of paid orders.

Prices are VAT-inclusive (the catalog's prices are what the customer pays), so the invoice splits the
total into net and VAT at ``settings.VAT_RATE``: net = total / (1 + rate), rounded to the cent, and
VAT = total - net, so that net + VAT is always exactly the amount charged.
"""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders import services
from orders.events import Actor
from orders.models import CreditNote, DocumentSequence, Invoice, Order, Refund

CENT = Decimal("0.01")
# The PDF core fonts speak Latin-1; these are the usual characters outside it in product names.
_LATIN1_FALLBACKS = str.maketrans({"–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "€": "EUR"})


def vat_rate() -> Decimal:
    return Decimal(str(settings.VAT_RATE))


def split_vat(gross: Decimal, rate: Decimal) -> tuple[Decimal, Decimal]:
    """(net, VAT) of a VAT-inclusive amount; they add up to ``gross`` exactly."""
    net = (gross / (1 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)
    return net, gross - net


def invoice_number(order: Order) -> str:
    return f"INV-{order.number}"


def generate_invoice(order: Order, *, actor: Actor | str) -> Invoice:
    """The order's invoice, made and stored the first time; later calls return the same one."""
    existing = Invoice.objects.filter(order=order).first()
    if existing is not None:
        return existing
    rate = vat_rate()
    net, vat = split_vat(order.total, rate)
    issued_at = timezone.now()
    number = invoice_number(order)
    pdf = render_pdf(order, number=number, issued_at=issued_at, net=net, vat=vat, rate=rate)
    with transaction.atomic():
        # The order row's lock makes a concurrent run wait here and then find the invoice.
        Order.objects.select_for_update().filter(pk=order.pk).first()
        existing = Invoice.objects.filter(order=order).first()
        if existing is not None:
            return existing
        invoice = Invoice(
            order=order,
            number=number,
            net=net,
            vat=vat,
            vat_rate=rate,
            total=order.total,
            currency=order.currency,
            created_at=issued_at,
        )
        invoice.file.name = _write_file(invoice_path(number), pdf)
        invoice.save()
        services.record_invoice_issued(invoice, actor=actor)
    return invoice


def invoice_path(number: str) -> str:
    return f"invoices/{number}.pdf"


def _write_file(name: str, content: bytes) -> str:
    """Store ``content`` at exactly ``name``, replacing what is there. A run killed between writing the
    file and committing its row leaves the file at this same name, and the retry overwrites it: never
    an orphan beside a renamed copy (the storage's default, ``INV-<n>_<random>.pdf``). Only the run
    holding the order's lock writes, so nobody reads a half-replaced file of a committed invoice."""
    storage = Invoice._meta.get_field("file").storage
    if storage.exists(name):
        storage.delete(name)
    stored = storage.save(name, ContentFile(content))
    if stored != name:  # somebody wrote the name between the delete and the save: not us, never expected
        storage.delete(stored)
        raise RuntimeError(f"invoice file {name} appeared while it was being replaced")
    return stored


def _text(value: object) -> str:
    return str(value).translate(_LATIN1_FALLBACKS).encode("latin-1", "replace").decode("latin-1")


def render_pdf(
    order: Order, *, number: str, issued_at: datetime, net: Decimal, vat: Decimal, rate: Decimal
) -> bytes:
    """The invoice as PDF bytes: seller, buyer, number, date, lines, net, VAT and total."""
    currency = order.currency
    from fpdf import FPDF  # imported here: a quarter second that every worker start need not pay

    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {number}")
    pdf.set_author(_text(settings.SELLER_NAME))
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, _text(settings.SELLER_NAME), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for line in [*settings.SELLER_ADDRESS, f"VAT ID {settings.SELLER_VAT_ID}", settings.SELLER_EMAIL]:
        pdf.cell(0, 5, _text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    for line in [
        order.name,
        order.shipping_line1,
        f"{order.shipping_postal_code} {order.shipping_city}",
        order.shipping_country,
    ]:
        pdf.cell(0, 5, _text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, f"Invoice {_text(number)}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    local = timezone.localtime(issued_at)
    pdf.cell(0, 5, f"Invoice date: {local:%Y-%m-%d}", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 5, f"Order number: {_text(order.number)}", new_x="LMARGIN", new_y="NEXT")
    if order.paid_at:
        pdf.cell(0, 5, f"Paid: {timezone.localtime(order.paid_at):%Y-%m-%d}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)

    widths = (30, 80, 15, 30, 35)
    pdf.set_font("Helvetica", "B", 10)
    for width, title, align in zip(
        widths, ["SKU", "Product", "Qty", "Unit price", "Amount"], "LLRRR", strict=True
    ):
        pdf.cell(width, 7, title, border="B", align=align)
    pdf.ln()
    pdf.set_font("Helvetica", size=10)
    for line in order.lines.order_by("sku"):
        cells = [
            line.sku,
            line.name[:45],
            str(line.quantity),
            f"{line.unit_price:.2f}",
            f"{line.line_total:.2f} {currency}",
        ]
        for width, value, align in zip(widths, cells, "LLRRR", strict=True):
            pdf.cell(width, 6, _text(value), align=align)
        pdf.ln()
    pdf.ln(2)
    label_width = sum(widths[:-1])
    percent = (rate * 100).normalize()
    for label, amount, style in [
        ("Net amount", net, ""),
        (f"VAT {percent:f}%", vat, ""),
        ("Total", order.total, "B"),
    ]:
        pdf.set_font("Helvetica", style, 10)
        pdf.cell(label_width, 6, label, align="R")
        pdf.cell(widths[-1], 6, f"{amount:.2f} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    pdf.set_font("Helvetica", size=9)
    thanks = f"All prices include VAT. Paid in full. Thank you for your order at {settings.SELLER_NAME}."
    pdf.multi_cell(0, 5, _text(thanks))
    return bytes(pdf.output())


# -- credit notes ----------------------------------------------------------------------------------------


def next_number(kind: str, prefix: str) -> str:
    """The next number of a kind of document this year, gap-free: the sequence row is locked until the
    caller's transaction ends, and a rollback gives the number back. Call inside a transaction."""
    year = timezone.localdate().year
    try:
        with transaction.atomic():
            DocumentSequence.objects.get_or_create(kind=kind, year=year)
    except IntegrityError:  # created concurrently: it exists now
        pass
    sequence = DocumentSequence.objects.select_for_update().get(kind=kind, year=year)
    DocumentSequence.objects.filter(pk=sequence.pk).update(last=sequence.last + 1)
    return f"{prefix}-{year}-{sequence.last + 1:05d}"


def issue_credit_note(refund: Refund, *, actor: Actor | str) -> CreditNote:
    """The credit note of a succeeded refund, made once (the order's invoice first, if it has none)."""
    existing = CreditNote.objects.filter(refund=refund).first()
    if existing is not None:
        return existing
    order = refund.order
    invoice = generate_invoice(order, actor=actor)
    with transaction.atomic():
        Order.objects.select_for_update().filter(pk=order.pk).first()
        existing = CreditNote.objects.filter(refund=refund).first()
        if existing is not None:
            return existing
        number = next_number("credit_note", "CN")
        issued_at = timezone.now()
        pdf = render_credit_note(refund, number=number, invoice=invoice, issued_at=issued_at)
        note = CreditNote(
            refund=refund,
            order=order,
            number=number,
            amount=refund.amount,
            currency=refund.currency,
            created_at=issued_at,
        )
        note.file.name = _write_file(f"credit_notes/{number}.pdf", pdf)
        note.save()
        services.record_credit_note_issued(note, actor=actor)
    return note


def render_credit_note(refund: Refund, *, number: str, invoice: Invoice, issued_at: datetime) -> bytes:
    """The credit note as PDF bytes: seller, buyer, its number, the invoice it corrects, what is refunded."""
    from fpdf import FPDF

    order = refund.order
    rate = invoice.vat_rate
    net, vat = split_vat(refund.amount, rate)
    pdf = FPDF(format="A4")
    pdf.set_title(f"Credit note {number}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, _text(settings.SELLER_NAME), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for line in [*settings.SELLER_ADDRESS, f"VAT ID {settings.SELLER_VAT_ID}"]:
        pdf.cell(0, 5, _text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    for line in [order.name, order.shipping_line1, f"{order.shipping_postal_code} {order.shipping_city}"]:
        pdf.cell(0, 5, _text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, f"Credit note {_text(number)}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 5, f"Date: {timezone.localtime(issued_at):%Y-%m-%d}", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(
        0,
        5,
        f"Corrects invoice {_text(invoice.number)} of order {_text(order.number)}",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.cell(0, 5, f"Reason: {_text(refund.reason)}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    prices = {line.sku: line for line in order.lines.all()}
    for sku, quantity in sorted((refund.lines or {}).items()):
        line = prices.get(sku)
        if line is not None:
            pdf.cell(
                0,
                5,
                _text(f"{quantity} x {sku} {line.name[:45]} at {line.unit_price:.2f}"),
                new_x="LMARGIN",
                new_y="NEXT",
            )
    pdf.ln(2)
    percent = (rate * 100).normalize()
    for label, amount in [
        ("Net refunded", net),
        (f"VAT {percent:f}%", vat),
        ("Total refunded", refund.amount),
    ]:
        pdf.cell(150, 6, label, align="R")
        pdf.cell(35, 6, f"{amount:.2f} {refund.currency}", align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
