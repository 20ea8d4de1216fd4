"""POST /webhooks/warehouse: signed with WAREHOUSE_SECRET on the raw body (t=,v1=, five minutes), stored
once by the warehouse's shipment id and status, applied by a job; every bad input a 4xx JSON error
that stores nothing."""

import json
import time

import pytest
from django.core import mail
from django.test import Client

from jobs.models import DeadLetter, Job
from jobs.testing import run_jobs
from orders import services
from orders.models import Order, OrderEvent, Shipment, WarehouseEvent
from orders.webhooks import sign
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec_warehouse_test"
K = OrderEvent.Kind


@pytest.fixture(autouse=True)
def secret(settings):
    settings.WAREHOUSE_SECRET = SECRET


@pytest.fixture
def order(place):
    ProductFactory(sku="A", name="Enamel mug", price="10.00", stock=10)
    ProductFactory(sku="B", name="Tea", price="4.50", stock=10)
    ProductFactory(sku="C", name="Spoon", price="2.00", stock=10)
    order = place({"A": 2, "B": 1, "C": 3})
    run_jobs()
    mail.outbox.clear()
    return order


def report(order, status="shipped", shipment_id="WH-1", lines=None, **extra) -> dict:
    body = {"shipment_id": shipment_id, "order": order.number, "status": status, **extra}
    if lines is not False:
        body["lines"] = [{"sku": s, "quantity": q} for s, q in (lines or {"A": 2}).items()]
    body.setdefault("carrier", "DHL")
    body.setdefault("tracking_number", "DHL-77")
    body.setdefault("tracking_url", "https://track.example/DHL-77")
    return body


def post(body, *, signature=None, raw: bytes | None = None, secret=SECRET, timestamp=None):
    payload = raw if raw is not None else json.dumps(body).encode()
    header = sign(payload, secret, timestamp) if signature is None else signature
    return Client().post(
        "/webhooks/warehouse", payload, content_type="application/json", HTTP_X_SHOP_SIGNATURE=header
    )


def test_a_signed_report_is_stored_once_answered_at_once_and_applied_by_a_job(order):
    response = post(report(order))
    assert response.status_code == 200
    assert response.json() == {"received": "WH-1:shipped", "duplicate": False}
    assert not Shipment.objects.exists()  # applied by the job, not in the request
    job = Job.objects.get(type="apply_warehouse_event")
    run_jobs()
    shipment = Shipment.objects.get()
    assert (shipment.warehouse_id, shipment.status, shipment.tracking_number) == ("WH-1", "shipped", "DHL-77")
    assert WarehouseEvent.objects.get().outcome == WarehouseEvent.Outcome.APPLIED
    order.refresh_from_db()
    assert order.status == Order.Status.PARTIALLY_SHIPPED
    shipped = OrderEvent.objects.get(order=order, kind=K.SHIPMENT_SHIPPED)
    assert shipped.job_id == job.id
    assert len([m for m in mail.outbox if "has shipped" in m.subject]) == 1


def test_a_repeated_report_is_200_and_changes_nothing(order):
    body = report(order)
    post(body)
    run_jobs()
    again = post(body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    run_jobs()
    assert Shipment.objects.count() == 1 and WarehouseEvent.objects.count() == 1
    assert Job.objects.filter(type="apply_warehouse_event").count() == 1
    assert OrderEvent.objects.filter(order=order, kind=K.SHIPMENT_SHIPPED).count() == 1
    assert len([m for m in mail.outbox if "has shipped" in m.subject]) == 1


def test_created_then_shipped_then_delivered_moves_one_shipment(order):
    for status in ("created", "shipped", "delivered"):
        assert post(report(order, status=status, lines={"A": 2, "B": 1, "C": 3})).status_code == 200
        run_jobs()
    shipment = Shipment.objects.get()
    assert shipment.status == Shipment.Status.DELIVERED
    order.refresh_from_db()
    assert order.status == Order.Status.DELIVERED
    counts = {k: OrderEvent.objects.filter(order=order, kind=k).count() for k in K.values if "shipment" in k}
    assert counts == {"shipment_created": 1, "shipment_shipped": 1, "shipment_delivered": 1}


def test_delivered_needs_no_lines_for_a_known_shipment(order):
    post(report(order))
    run_jobs()
    assert post(report(order, status="delivered", lines=False)).status_code == 200
    run_jobs()
    assert Shipment.objects.get().status == Shipment.Status.DELIVERED


@pytest.mark.parametrize(
    "signature",
    ["", "t=1,v1=abc", "nonsense", "v1=" + "0" * 64],
    ids=["missing", "wrong", "garbage", "no-timestamp"],
)
def test_a_bad_signature_is_400_and_stores_nothing(order, signature):
    response = post(report(order), signature=signature)
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert (
        not WarehouseEvent.objects.exists() and not Job.objects.filter(type="apply_warehouse_event").exists()
    )


def test_an_old_timestamp_is_refused(order):
    response = post(report(order), timestamp=int(time.time()) - 301)
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert post(report(order), timestamp=int(time.time()) - 240).status_code == 200  # within five minutes


def test_the_signature_covers_the_raw_body(order):
    raw = json.dumps(report(order)).encode()
    header = sign(raw, SECRET)
    tampered = raw.replace(b'"quantity": 2', b'"quantity": 1')
    response = post(None, raw=tampered, signature=header)
    assert response.status_code == 400
    assert post(report(order), secret="another secret").status_code == 400
    assert not WarehouseEvent.objects.exists()


def test_over_shipping_is_422_with_what_is_left(order):
    response = post(report(order, lines={"A": 3}))
    assert response.status_code == 422
    assert response.json() == {
        "error": "over_shipping",
        "message": "Only 2 of A left to ship, 3 reported.",
        "sku": "A",
        "left": 2,
    }
    assert not WarehouseEvent.objects.exists()


@pytest.mark.parametrize(
    "change, status, code",
    [
        ({"status": "lost"}, 400, "invalid_request"),
        ({"order": "NOPE"}, 404, "unknown_order"),
        ({"lines": [{"sku": "A", "quantity": 0}]}, 400, "invalid_request"),
        ({"lines": [{"sku": "Z", "quantity": 1}]}, 422, "unknown_line"),
        ({"lines": []}, 400, "invalid_request"),
        ({"shipment_id": ""}, 400, "invalid_request"),
        ({"tracking_url": "javascript:alert(1)"}, 400, "invalid_request"),
    ],
)
def test_bad_reports_are_clear_4xx_json_errors(order, change, status, code):
    response = post({**report(order), **change})
    assert response.status_code == status and response.json()["error"] == code, response.json()
    assert not WarehouseEvent.objects.exists()


def test_not_json_is_400_and_get_is_405_json(order):
    assert post(None, raw=b"{not json").json()["error"] == "invalid_json"
    response = Client().get("/webhooks/warehouse")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_without_a_secret_every_callback_is_refused(order, settings):
    settings.WAREHOUSE_SECRET = ""
    response = post(report(order), secret="")
    assert response.status_code == 503 and response.json()["error"] == "not_configured"


def test_a_report_for_an_order_cancelled_meanwhile_goes_to_the_dead_letters_with_the_raw_report(order):
    post(report(order))
    services.cancel_order(order, actor="customer")
    run_jobs()
    event = WarehouseEvent.objects.get()
    assert event.outcome == WarehouseEvent.Outcome.REFUSED and "cancelled" in event.note
    dead = DeadLetter.objects.get(type="apply_warehouse_event")
    assert dead.payload == {"event_id": "WH-1:shipped"}
    assert not Shipment.objects.exists()
