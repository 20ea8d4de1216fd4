"""generate_invoice: a real PDF, one per order, downloadable by the order's token and from admin."""

import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from pypdf import PdfReader

from jobs.api import enqueue
from jobs.models import Job
from jobs.testing import run_jobs
from orders.invoices import split_vat
from orders.models import Invoice
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def test_invoice_pdf_has_seller_number_date_lines_vat_and_total(place, settings):
    settings.SELLER_NAME = "Mugs & More GmbH"
    settings.SELLER_VAT_ID = "DE123456789"
    settings.VAT_RATE = "0.19"
    tea = ProductFactory(sku="TEA", name="Green tea", price="4.50", stock=10)
    order = place({"MUG": 2, "TEA": 1})
    run_jobs()
    invoice = Invoice.objects.get(order=order)
    with invoice.file.open("rb") as f:
        text = pdf_text(f.read())
    assert "Mugs & More GmbH" in text and "DE123456789" in text
    assert f"Invoice INV-{order.number}" in text
    assert f"Order number: {order.number}" in text
    assert f"Invoice date: {timezone.localdate():%Y-%m-%d}" in text
    assert "Coffee mug" in text and "23.80 EUR" in text
    assert tea.name in text and "4.50 EUR" in text
    # 28.30 gross at 19 %: 23.78 net + 4.52 VAT
    assert "Net amount" in text and "23.78 EUR" in text
    assert "VAT 19%" in text and "4.52 EUR" in text
    assert "Total" in text and "28.30 EUR" in text
    assert (invoice.net, invoice.vat, invoice.total) == (Decimal("23.78"), Decimal("4.52"), Decimal("28.30"))


@pytest.mark.parametrize("gross", ["0.01", "0.99", "19.90", "1234.56"])
def test_net_and_vat_add_up_to_the_gross_amount(gross):
    net, vat = split_vat(Decimal(gross), Decimal("0.19"))
    assert net + vat == Decimal(gross)
    assert net.as_tuple().exponent == -2


def test_invoice_job_run_twice_keeps_one_invoice_and_one_file(place, settings, tmp_path):
    order = place()
    run_jobs()
    first = Invoice.objects.get(order=order)
    again = enqueue("generate_invoice", {"order_id": order.id})
    run_jobs()
    assert Job.objects.get(id=again.id).result == {"invoice": first.number}
    assert Invoice.objects.count() == 1
    files = list((tmp_path / "media" / "invoices").iterdir())
    assert [f.name for f in files] == [f"{first.number}.pdf"]


def test_invoice_is_downloadable_by_the_order_token(place, client):
    order = place()
    assert client.get(f"/orders/{order.token}/invoice.pdf").status_code == 404  # not made yet
    run_jobs()
    response = client.get(f"/orders/{order.token}/invoice.pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert f"INV-{order.number}.pdf" in response["Content-Disposition"]
    assert f"INV-{order.number}" in pdf_text(b"".join(response.streaming_content))
    assert client.get("/orders/not-a-token/invoice.pdf").status_code == 404


def test_invoice_is_downloadable_from_admin_by_staff_only(place, client):
    order = place()
    run_jobs()
    invoice = Invoice.objects.get(order=order)
    url = f"/admin/orders/invoice/{invoice.pk}/download/"
    assert client.get(url).status_code == 302  # to the login page
    staff = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403  # staff, but without view permission on invoices
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    listing = client.get("/admin/orders/invoice/")
    assert url in listing.content.decode()
    assert url in client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    response = client.get(url)
    assert response.status_code == 200
    assert f"INV-{order.number}" in pdf_text(b"".join(response.streaming_content))
