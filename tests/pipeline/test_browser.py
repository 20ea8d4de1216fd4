"""A customer checks out in a real browser and watches the order page follow the pipeline."""

import pytest

from orders.models import Order
from shop.models import Product
from tests.factories import ProductFactory
from tests.jobs.conftest import WorkerProcesses

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def workers(tmp_path):
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


def test_order_page_timeline_reaches_ready_to_ship_without_a_reload(page, workers, tmp_path, settings):
    ProductFactory(sku="LAMP", name="Desk lamp", price="39.00", stock=3)
    page.goto("/products/LAMP/")
    page.get_by_role("button", name="Add to cart").click()
    page.goto("/checkout/")
    page.fill("#id_email", "grace@example.com")
    page.fill("#id_name", "Grace Hopper")
    page.fill("#id_line1", "1 Compiler Way")
    page.fill("#id_city", "Arlington")
    page.fill("#id_postal_code", "22201")
    page.fill("#id_country", "us")
    page.get_by_role("button", name="Place order and pay").click()
    page.wait_for_url("**/orders/*/")
    order = Order.objects.get()
    assert page.locator("#order-status").inner_text() == "Paid"
    assert page.locator('[data-step="confirmation"]').get_attribute("data-state") == "pending"
    page.evaluate("window.stillTheSamePage = true")

    # Only now does a worker start: everything after this point reaches the page by polling.
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    workers.start(env={"EMAIL_URL": f"filemail://{mail_dir}", "MEDIA_ROOT": settings.MEDIA_ROOT})
    page.wait_for_selector('[data-step="fulfilled"][data-state="done"]', timeout=30_000)

    assert page.locator("#order-status").inner_text() == "Ready to ship"
    for step in ("confirmation", "invoice", "inventory"):
        assert page.locator(f'[data-step="{step}"]').get_attribute("data-state") == "done"
    link = page.get_by_role("link", name="Download invoice (PDF)")
    assert link.is_visible()
    assert link.get_attribute("href") == f"/orders/{order.token}/invoice.pdf"
    assert page.evaluate("window.stillTheSamePage") is True
    assert "Traceback" not in page.content()
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == f"INV-{order.number}.pdf"


def checkout_with(page, token: str) -> None:
    ProductFactory(sku="LAMP", name="Desk lamp", price="39.00", stock=3)
    page.goto("/products/LAMP/")
    page.get_by_role("button", name="Add to cart").click()
    page.goto("/checkout/")
    page.fill("#id_email", "grace@example.com")
    page.fill("#id_name", "Grace Hopper")
    page.fill("#id_line1", "1 Compiler Way")
    page.fill("#id_city", "Arlington")
    page.fill("#id_postal_code", "22201")
    page.fill("#id_country", "us")
    page.fill("#id_payment_token", token)
    page.get_by_role("button", name="Place order and pay").click()


def test_three_d_secure_in_the_browser_ends_paid_then_ready_to_ship(page, workers, tmp_path, settings):
    checkout_with(page, "tok_threeDSecureRequired")
    page.wait_for_url("**/fake-gateway/authenticate/*/")
    assert "confirm a payment of" in page.content() and "39.00" in page.content()
    page.get_by_role("button", name="Authenticate").click()
    page.wait_for_url("**/orders/*/")
    order = Order.objects.get()
    assert page.url.endswith(order.get_absolute_url())
    assert page.locator("#order-status").inner_text() == "Paid"
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    workers.start(env={"EMAIL_URL": f"filemail://{mail_dir}", "MEDIA_ROOT": settings.MEDIA_ROOT})
    page.wait_for_selector('[data-step="fulfilled"][data-state="done"]', timeout=30_000)
    assert page.locator("#order-status").inner_text() == "Ready to ship"


def test_failed_three_d_secure_in_the_browser_fails_the_order_and_returns_the_stock(page):
    checkout_with(page, "tok_threeDSecureRequired")
    page.wait_for_url("**/fake-gateway/authenticate/*/")
    page.get_by_role("button", name="Fail authentication").click()
    page.wait_for_url("**/orders/*/")
    assert page.locator("#order-status").inner_text() == "Payment failed"
    assert "could not be authenticated" in page.content()
    order = Order.objects.get()
    assert order.status == Order.Status.PAYMENT_FAILED
    assert Product.objects.get(sku="LAMP").stock == 3


def test_the_customer_cancels_from_the_order_page_and_watches_the_timeline(page, workers, tmp_path, settings):
    from orders.services import ShippingAddress, place_order

    ProductFactory(sku="LAMP", name="Desk lamp", price="39.00", stock=3)
    order = place_order(
        email="grace@example.com",
        name="Grace Hopper",
        shipping_address=ShippingAddress("1 Compiler Way", "Arlington", "22201", "US"),
        items={"LAMP": 2},
        payment_token="tok_visa",
        actor="customer",
    )
    page.goto(order.get_absolute_url())
    assert page.locator('#timeline [data-kind="placed"]').count() == 1
    page.get_by_role("link", name="Cancel this order").click()
    page.wait_for_url("**/cancel")
    assert "the whole amount of 78.00" in page.content()
    page.get_by_role("button", name="Yes, cancel my order").click()
    page.wait_for_url(f"**{order.get_absolute_url()}")
    assert page.locator("#order-status").inner_text() == "Cancelled"
    assert page.locator('#timeline [data-kind="cancelled"]').count() == 1
    assert page.locator("#cancel-link").count() == 0
    assert Product.objects.get(sku="LAMP").stock == 3
    page.evaluate("window.stillTheSamePage = true")

    # The refund runs as a job: its event reaches the open page by polling, without a reload.
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    workers.start(env={"EMAIL_URL": f"filemail://{mail_dir}", "MEDIA_ROOT": settings.MEDIA_ROOT})
    page.wait_for_selector('#timeline [data-kind="refund_succeeded"]', timeout=30_000)
    assert page.evaluate("window.stillTheSamePage") is True
    assert "Traceback" not in page.content()


def test_a_shipped_order_has_no_cancel_button_and_a_forged_post_is_refused(page):
    from jobs.testing import run_jobs
    from orders.services import ShippingAddress, create_shipment, place_order

    ProductFactory(sku="LAMP", name="Desk lamp", price="39.00", stock=5)

    def new_order():
        return place_order(
            email="grace@example.com",
            name="Grace Hopper",
            shipping_address=ShippingAddress("1 Compiler Way", "Arlington", "22201", "US"),
            items={"LAMP": 1},
            payment_token="tok_visa",
            actor="customer",
        )

    shipped, other = new_order(), new_order()
    run_jobs()
    create_shipment(
        shipped, lines={"LAMP": 1}, actor="staff:grace", tracking_url="https://track.example/1", shipped=True
    )
    page.goto(shipped.get_absolute_url())
    assert page.locator("#order-status").inner_text() == "Shipped"
    assert page.locator("#cancel-link").count() == 0
    assert (
        page.get_by_role("link", name="Track the parcel").get_attribute("href") == "https://track.example/1"
    )
    assert page.locator('#timeline [data-kind="shipment_shipped"]').count() == 1

    # A forged POST (no CSRF token) is refused; one with a valid token for the session is refused too.
    forged = page.request.post(f"/orders/{shipped.token}/cancel", form={"confirm": "yes"})
    assert forged.status == 403
    page.goto(f"/orders/{other.token}/cancel")
    token = page.locator("input[name=csrfmiddlewaretoken]").get_attribute("value")
    refused = page.request.post(f"/orders/{shipped.token}/cancel", form={"csrfmiddlewaretoken": token})
    assert refused.status == 409 and "can no longer be cancelled" in refused.text()
    shipped.refresh_from_db()
    assert shipped.status == Order.Status.SHIPPED
