"""Shipments: partial shipping by line, statuses partially_shipped / shipped / delivered, never more than
ordered (service, admin form), one shipping email (HTML and text, with the tracking link) and one
order.shipped per shipped shipment, order.delivered, and the follow-up only once everything shipped."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from jobs.api import enqueue
from jobs.models import Job
from jobs.testing import run_jobs
from orders import services
from orders.models import Order, OrderEvent, OrderMessage, Shipment, WebhookEndpoint
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

K = OrderEvent.Kind


@pytest.fixture
def order(place):
    """A three-line order, ready to ship."""
    ProductFactory(sku="A", name="Enamel mug", price="10.00", stock=10)
    ProductFactory(sku="B", name="Tea", price="4.50", stock=10)
    ProductFactory(sku="C", name="Spoon", price="2.00", stock=10)
    order = place({"A": 2, "B": 1, "C": 3})
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED
    mail.outbox.clear()
    return order


@pytest.fixture
def staff():
    return User.objects.create_user("grace", password="pw", is_staff=True, is_superuser=True)


def shipping_emails():
    return [m for m in mail.outbox if "has shipped" in m.subject]


def test_two_shipments_of_a_three_line_order_move_it_to_partially_shipped_then_shipped(order):
    hook = WebhookEndpoint.objects.create(
        url="http://hooks.example/", events=["order.shipped", "order.delivered"]
    )
    first = services.create_shipment(
        order,
        lines={"A": 2, "C": 1},
        actor="staff:grace",
        carrier="DHL",
        tracking_number="DHL-1",
        tracking_url="https://track.example/DHL-1",
        shipped=True,
    )
    order.refresh_from_db()
    assert order.status == Order.Status.PARTIALLY_SHIPPED and first.status == Shipment.Status.SHIPPED
    assert services.unshipped(order) == {"A": 0, "B": 1, "C": 2}
    second = services.create_shipment(
        order, lines={"B": 1, "C": 2}, actor="staff:grace", carrier="UPS", tracking_number="UPS-2"
    )
    order.refresh_from_db()
    assert order.status == Order.Status.PARTIALLY_SHIPPED  # packed, not yet with the carrier
    assert services.mark_shipment_shipped(second, actor="staff:grace", tracking_url="https://ups.example/2")
    assert not services.mark_shipment_shipped(second, actor="staff:grace")
    order.refresh_from_db()
    assert order.status == Order.Status.SHIPPED

    assert services.mark_shipment_delivered(first, actor="system")
    order.refresh_from_db()
    assert order.status == Order.Status.SHIPPED  # delivered when every shipment is
    assert services.mark_shipment_delivered(second, actor="system")
    assert not services.mark_shipment_delivered(second, actor="system")
    order.refresh_from_db()
    assert order.status == Order.Status.DELIVERED

    kinds = list(
        OrderEvent.objects.filter(order=order, kind__startswith="shipment_").values_list("kind", flat=True)
    )
    assert sorted(kinds) == sorted(
        [K.SHIPMENT_CREATED] * 2 + [K.SHIPMENT_SHIPPED] * 2 + [K.SHIPMENT_DELIVERED] * 2
    )
    assert [m.body["type"] for m in OrderMessage.objects.filter(order=order).order_by("id")] == [
        "order.shipped",
        "order.shipped",
        "order.delivered",
        "order.delivered",
    ]
    shipped = OrderMessage.objects.filter(order=order, event="order.shipped").order_by("id")
    assert shipped[0].body["shipment"]["tracking_number"] == "DHL-1"
    assert shipped[0].body["data"]["status"] == "partially_shipped"
    assert shipped[1].body["data"]["status"] == "shipped"
    assert Job.objects.filter(type="deliver_webhook", payload__endpoint_id=hook.pk).count() == 4


def test_each_shipped_shipment_emails_the_customer_once_with_the_tracking_link(order, settings):
    shipment = services.create_shipment(
        order,
        lines={"A": 2},
        actor="staff:grace",
        carrier="DHL",
        tracking_number="DHL-1",
        tracking_url="https://track.example/DHL-1",
        shipped=True,
    )
    run_jobs()
    for _ in range(2):  # a repeated job sends nothing more
        enqueue("send_shipping_email", {"shipment_id": shipment.pk})
        run_jobs()
    (message,) = shipping_emails()
    assert message.to == ["ada@example.com"] and order.number in message.subject
    assert "https://track.example/DHL-1" in message.body and "DHL-1" in message.body
    assert "the rest follows in another parcel" in message.body
    (html, mimetype), *_ = message.alternatives
    assert mimetype == "text/html" and 'href="https://track.example/DHL-1"' in html
    assert "List-Unsubscribe" not in message.extra_headers
    assert settings.SHOP_NAME in message.body and settings.SHOP_BASE_URL in message.body
    shipment.refresh_from_db()
    assert shipment.emailed_at is not None
    emails = OrderEvent.objects.filter(order=order, kind=K.EMAIL_SENT, facts__email="shipping")
    assert emails.count() == 1


def test_a_packed_shipment_sends_no_email_until_it_ships(order):
    shipment = services.create_shipment(order, lines={"A": 1}, actor="staff:grace")
    run_jobs()
    assert not shipping_emails()
    services.mark_shipment_shipped(shipment, actor="staff:grace", tracking_number="X-1")
    run_jobs()
    assert len(shipping_emails()) == 1


@pytest.mark.parametrize(
    "lines, message",
    [
        ({"A": 3}, "Only 2 of A left to ship (2 ordered), 3 requested."),
        ({"Z": 1}, "has no line Z"),
        ({"A": 0}, "must be a whole number of at least 1"),
        ({}, "Pick at least one line"),
    ],
)
def test_over_shipping_and_bad_lines_are_refused_with_a_clear_error(order, lines, message):
    with pytest.raises(services.InvalidShipment, match=re.escape(message)):
        services.create_shipment(order, lines=lines, actor="staff:grace")
    assert not Shipment.objects.exists()


def test_what_was_shipped_is_not_shippable_again(order):
    services.create_shipment(order, lines={"A": 2, "B": 1}, actor="staff:grace", shipped=True)
    with pytest.raises(services.InvalidShipment, match="Only 0 of A left to ship"):
        services.create_shipment(order, lines={"A": 1}, actor="staff:grace")


@pytest.mark.parametrize("status", ["pending_payment", "paid", "cancelled", "refunded", "shipped"])
def test_only_orders_ready_to_ship_or_partially_shipped_can_ship(order, status):
    Order.objects.filter(pk=order.pk).update(status=status)
    with pytest.raises(services.InvalidShipment, match="only orders ready to ship"):
        services.create_shipment(order, lines={"A": 1}, actor="staff:grace")


def test_staff_ship_in_admin_picking_lines_and_quantities(order, staff):
    client = Client()
    client.force_login(staff)
    page = client.get(f"/admin/orders/order/{order.pk}/change/").content.decode()
    assert f"/admin/orders/order/{order.pk}/ship/" in page
    form = client.get(f"/admin/orders/order/{order.pk}/ship/")
    assert form.status_code == 200 and "2 ordered, 2 left to ship" in form.content.decode()
    response = client.post(
        f"/admin/orders/order/{order.pk}/ship/",
        {"line_A": "2", "line_C": "1", "carrier": "DHL", "tracking_number": "DHL-9", "shipped": "on"},
    )
    assert response.status_code == 302
    shipment = Shipment.objects.get()
    assert {i.line.sku: i.quantity for i in shipment.lines.all()} == {"A": 2, "C": 1}
    assert shipment.status == Shipment.Status.SHIPPED and shipment.tracking_number == "DHL-9"
    created = OrderEvent.objects.get(order=order, kind=K.SHIPMENT_CREATED)
    assert created.actor_user == staff
    order.refresh_from_db()
    assert order.status == Order.Status.PARTIALLY_SHIPPED


def test_admin_refuses_over_shipping_with_a_form_error(order, staff):
    client = Client()
    client.force_login(staff)
    response = client.post(f"/admin/orders/order/{order.pk}/ship/", {"line_A": "3", "carrier": "DHL"})
    assert response.status_code == 400
    assert "Ensure this value is less than or equal to 2." in response.content.decode()
    response = client.post(f"/admin/orders/order/{order.pk}/ship/", {"carrier": "DHL"})
    assert response.status_code == 400 and "Pick at least one line to ship." in response.content.decode()
    assert not Shipment.objects.exists()


def test_admin_shows_the_service_refusal_when_lines_were_shipped_meanwhile(order, staff):
    client = Client()
    client.force_login(staff)
    form = client.get(f"/admin/orders/order/{order.pk}/ship/")
    assert form.status_code == 200
    services.create_shipment(order, lines={"A": 2}, actor="system")
    # The form was shown with 2 left; its bound copy now allows 0, so the field itself refuses.
    response = client.post(f"/admin/orders/order/{order.pk}/ship/", {"line_A": "1"})
    assert response.status_code == 400 and "less than or equal to 0" in response.content.decode()
    assert Shipment.objects.count() == 1


def test_shipments_move_on_from_their_admin_list(order, staff):
    shipment = services.create_shipment(order, lines={"A": 2, "B": 1, "C": 3}, actor="system")
    client = Client()
    client.force_login(staff)
    for action in ("mark_shipped", "mark_delivered"):
        response = client.post(
            "/admin/orders/shipment/", {"action": action, "_selected_action": [shipment.pk]}
        )
        assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.DELIVERED
    assert OrderEvent.objects.get(order=order, kind=K.SHIPMENT_DELIVERED).actor_user == staff


def test_followup_goes_only_to_orders_that_shipped_and_never_to_cancelled_ones(order, place):
    enqueue("send_followup_email", {"order_id": order.id})  # ready to ship, not shipped: not yet
    run_jobs()
    assert not [m for m in mail.outbox if "How was" in m.subject]
    services.create_shipment(order, lines={"A": 2, "B": 1, "C": 3}, actor="system", shipped=True)
    followup = Job.objects.get(unique_key=f"order:{order.id}:followup")
    Job.objects.filter(pk=followup.pk).update(run_at=followup.created_at)
    run_jobs()
    assert len([m for m in mail.outbox if "How was" in m.subject]) == 1
    assert Job.objects.get(pk=followup.pk).result == {"sent": True}

    cancelled = place({"A": 1})
    services.cancel_order(cancelled, actor="customer")
    job = enqueue("send_followup_email", {"order_id": cancelled.id})
    run_jobs()
    assert Job.objects.get(pk=job.pk).result == {"sent": False}
    assert len([m for m in mail.outbox if "How was" in m.subject]) == 1
