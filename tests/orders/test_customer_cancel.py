"""The customer cancels from the order page while nothing has shipped: a confirmation step, CSRF, the
stock released once, a full refund job, an email and order.cancelled; refused once a shipment exists."""

import pytest
from django.core import mail
from django.test import Client

from jobs.models import Job
from jobs.testing import run_jobs
from orders import services
from orders.models import Order, OrderEvent, OrderMessage, Payment, WebhookEndpoint
from shop.models import Product
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def order(place):
    ProductFactory(sku="A", name="Enamel mug", price="10.00", stock=10)
    return place({"A": 3})


def stock() -> int:
    return Product.objects.get(sku="A").stock


def confirm(client: Client, order) -> str:
    """GET the confirmation page; returns its CSRF token."""
    page = client.get(f"/orders/{order.token}/cancel")
    assert page.status_code == 200
    assert "Yes, cancel my order" in page.content.decode()
    return page.context["csrf_token"]


def test_the_order_page_links_a_confirmation_step_before_anything_is_cancelled(order):
    client = Client(enforce_csrf_checks=True)
    page = client.get(f"/orders/{order.token}/").content.decode()
    assert f'href="/orders/{order.token}/cancel"' in page
    confirm(client, order)
    order.refresh_from_db()
    assert order.status == Order.Status.PAID  # a GET changes nothing


def test_the_customer_cancels_and_gets_stock_released_refund_email_and_event(order):
    WebhookEndpoint.objects.create(url="http://hooks.example/", events=["order.cancelled"])
    assert stock() == 7
    client = Client(enforce_csrf_checks=True)
    token = confirm(client, order)
    response = client.post(f"/orders/{order.token}/cancel", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == f"/orders/{order.token}/"
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED and stock() == 10
    cancelled = OrderEvent.objects.get(order=order, kind="cancelled")
    assert cancelled.actor_kind == "customer"
    assert OrderEvent.objects.filter(order=order, kind="stock_released").count() == 1
    assert Job.objects.filter(type="process_refund").count() == 1
    assert OrderMessage.objects.filter(order=order, event="order.cancelled").count() == 1
    run_jobs()
    assert order.payments.get().status == Payment.Status.REFUNDED
    (email,) = [m for m in mail.outbox if "is cancelled" in m.subject]
    assert order.number in email.body and "10.00" not in email.subject and email.alternatives
    page = client.get(f"/orders/{order.token}/").content.decode()
    assert 'data-kind="cancelled"' in page and 'data-kind="refund_succeeded"' in page
    assert 'id="cancel-link"' not in page

    again = client.post(f"/orders/{order.token}/cancel", {"csrfmiddlewaretoken": token})
    assert again.status_code == 409 and "can no longer be cancelled" in again.content.decode()
    assert stock() == 10 and Job.objects.filter(type="process_refund").count() == 1


def test_a_post_without_the_csrf_token_is_refused(order):
    client = Client(enforce_csrf_checks=True)
    confirm(client, order)
    assert client.post(f"/orders/{order.token}/cancel", {}).status_code == 403
    assert Client(enforce_csrf_checks=True).post(f"/orders/{order.token}/cancel").status_code == 403
    order.refresh_from_db()
    assert order.status == Order.Status.PAID and stock() == 7


def test_once_a_shipment_exists_the_button_is_gone_and_the_server_refuses(order):
    run_jobs()
    client = Client(enforce_csrf_checks=True)
    token = confirm(client, order)  # the page was open while staff packed the parcel
    services.create_shipment(order, lines={"A": 1}, actor="staff:grace")  # packed, not yet shipped
    page = client.get(f"/orders/{order.token}/").content.decode()
    assert "Cancel this order" not in page
    refusal = client.get(f"/orders/{order.token}/cancel")
    assert refusal.status_code == 409 and "Yes, cancel" not in refusal.content.decode()
    response = client.post(f"/orders/{order.token}/cancel", {"csrfmiddlewaretoken": token})
    assert response.status_code == 409
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED and not Job.objects.filter(type="process_refund").exists()
    assert client.get(f"/api/orders/{order.token}").json()["can_cancel"] is False


def test_a_ready_to_ship_order_can_still_be_cancelled(order):
    run_jobs()
    order.refresh_from_db()
    assert order.status == Order.Status.FULFILLED
    services.cancel_order(order, actor="customer")
    assert order.status == Order.Status.CANCELLED and stock() == 10


def test_an_unknown_order_is_404(client):
    assert client.get("/orders/nope/cancel").status_code == 404
