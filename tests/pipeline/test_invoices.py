"""generate_invoice: a real PDF, one per order, downloadable by the order's token and from admin."""

import io
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from pypdf import PdfReader

from jobs.api import enqueue
from jobs.models import Job
from jobs.testing import run_jobs
from orders.invoices import split_vat
from orders.models import Invoice
from tests.factories import OrderFactory, OrderLineFactory, ProductFactory
from tests.jobs.conftest import WorkerProcesses
from tests.utils import database_url, wait_for

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


# -- a run killed between writing the file and committing its row ---------------------------------------


def test_a_file_left_by_a_killed_run_is_overwritten_not_renamed(place, settings):
    order = place()
    orphan = Path(settings.MEDIA_ROOT) / "invoices" / f"INV-{order.number}.pdf"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"%PDF- cut short by SIGKILL")
    run_jobs()
    invoice = Invoice.objects.get(order=order)
    assert invoice.file.name == f"invoices/INV-{order.number}.pdf"
    assert [p.name for p in orphan.parent.iterdir()] == [orphan.name]
    assert f"Invoice INV-{order.number}" in pdf_text(orphan.read_bytes())


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_the_invoice_file_and_its_row_leaves_one_file(product, settings, tmp_path):
    """The worker is held at the invoice's INSERT (a concurrent transaction holds the number) once its
    file is written, and SIGKILLed there; the rescued job writes the same name, and only it."""
    if connection.vendor != "postgresql":
        pytest.skip("holding one INSERT while the rest of the transaction runs needs row-level locks")
    order = OrderFactory(status="paid", paid_at=timezone.now(), total=Decimal("11.90"))
    OrderLineFactory(order=order, product=product)
    enqueue("generate_invoice", {"order_id": order.id})
    other = OrderFactory()
    path = Path(settings.MEDIA_ROOT) / "invoices" / f"INV-{order.number}.pdf"
    blocker = psycopg.connect(database_url(), autocommit=False)
    try:
        blocker.execute(
            "INSERT INTO orders_invoice"
            " (order_id, number, file, net, vat, vat_rate, total, currency, created_at)"
            " VALUES (%s, %s, 'held', 0, 0, 0, 0, 'EUR', now())",
            [other.pk, f"INV-{order.number}"],
        )
        procs = WorkerProcesses(tmp_path)
        try:
            worker = procs.start("--stale-after", "1", env={"MEDIA_ROOT": settings.MEDIA_ROOT})

            def held_at_the_insert() -> bool:
                # Not on the blocker's connection: a transaction sees one snapshot of pg_stat_activity.
                with psycopg.connect(database_url(), autocommit=True) as probe:
                    row = probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'INSERT INTO \"orders_invoice\"%%'"
                    ).fetchone()
                return path.exists() and row[0] == 1

            wait_for(held_at_the_insert, timeout=60, message="the worker wrote the file and waits to insert")
            worker.kill()
            worker.wait(10)
            blocker.rollback()
            assert not Invoice.objects.filter(order=order).exists() and path.exists()
            procs.start("--stale-after", "1", env={"MEDIA_ROOT": settings.MEDIA_ROOT})
            wait_for(lambda: Invoice.objects.filter(order=order).exists(), timeout=60, message="invoice made")
            # The job's success is recorded just after the transaction that made the invoice commits.
            wait_for(
                lambda: Job.objects.get(type="generate_invoice").status == "succeeded",
                timeout=60,
                message="the rescued job recorded as succeeded",
            )
        finally:
            procs.stop_all()
    finally:
        blocker.close()
    invoice = Invoice.objects.get(order=order)
    assert invoice.file.name == f"invoices/INV-{order.number}.pdf"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert f"Invoice INV-{order.number}" in pdf_text(path.read_bytes())
    job = Job.objects.get(type="generate_invoice")
    assert job.status == "succeeded" and any(e["exception"].endswith("WorkerLost") for e in job.errors)
