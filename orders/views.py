"""The HTML checkout and order page. The work is done by ``orders.services.place_order``."""

import logging
import secrets
import time

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from orders import idempotency, services
from orders.events import CUSTOMER, customer_timeline, customer_view, shown_to_customer
from orders.forms import CheckoutForm
from orders.models import IdempotencyKey, Invoice, Order, Payment
from orders.pipeline import pipeline_steps
from orders.services import (
    InvalidOrder,
    OutOfStock,
    PaymentGatewayError,
    ShippingAddress,
    UnknownProduct,
    place_order,
)
from shop.cart import Cart, cart_total

logger = logging.getLogger(__name__)


CHECKOUT_TOKENS = "checkout_tokens"  # session key: the one-time tokens of the checkout forms shown
MAX_CHECKOUT_TOKENS = 20
IN_PROGRESS_WAIT = 0.1  # seconds between two looks at a checkout that another request is placing


def _render_checkout(request: HttpRequest, form: CheckoutForm, cart: Cart, status: int = 200) -> HttpResponse:
    """The checkout page with a fresh one-time token: the form's idempotency key, so that a double
    submit or a resubmitted POST places one order (see ``create_order``)."""
    token = secrets.token_urlsafe(24)
    request.session[CHECKOUT_TOKENS] = [*request.session.get(CHECKOUT_TOKENS, [])][
        -MAX_CHECKOUT_TOKENS + 1 :
    ] + [token]
    lines = cart.lines()
    context = {"form": form, "lines": lines, "total": cart_total(lines), "checkout_token": token}
    return render(request, "orders/checkout.html", context, status=status)


@require_GET
def checkout(request: HttpRequest) -> HttpResponse:
    cart = Cart(request)
    if not cart.lines():
        return redirect("cart")
    return _render_checkout(request, CheckoutForm(), cart)


@require_POST
def create_order(request: HttpRequest) -> HttpResponse:
    """Place the order of the session's cart. The form's one-time token is the idempotency key: the
    first request with it places the order; another one (a double click, a resubmitted POST) shows
    what the first one did, waiting for it if it is still running; a request that died is resumed."""
    cart = Cart(request)
    form = CheckoutForm(request.POST)
    token = request.POST.get("checkout_token", "")
    if token not in request.session.get(CHECKOUT_TOKENS, []):
        form.is_valid()
        form.add_error(None, "This checkout page has expired. Please check your order and place it again.")
        return _render_checkout(request, form, cart, status=400)
    scope = IdempotencyKey.Scope.CHECKOUT
    if not IdempotencyKey.objects.filter(scope=scope, key=token).exists():
        if not cart.lines():
            form.add_error(None, "Your cart is empty.")
        if not form.is_valid():
            return _render_checkout(request, form, cart, status=400)
    taken = idempotency.take(scope, token, "")
    deadline = time.monotonic() + settings.IDEMPOTENCY_LEASE
    while isinstance(taken, idempotency.InProgress):
        # Another request holds the token. Wait for it to settle the order, or for its lease to expire
        # (its request died) and take over: a resubmit after a crash settles the order, not just shows it.
        record = IdempotencyKey.objects.filter(scope=scope, key=token).select_related("order").first()
        order = record.order if record is not None else None
        if order is not None and order.status != Order.Status.PENDING_PAYMENT:
            cart.clear()
            return redirect(order)
        if time.monotonic() > deadline:
            if order is not None:  # still being paid by a live request: show it, live
                cart.clear()
                return redirect(order)
            form.add_error(None, "Your order is already being placed. Please wait a moment and reload.")
            return _render_checkout(request, form, cart, status=409)
        time.sleep(IN_PROGRESS_WAIT)
        taken = idempotency.take(scope, token, "")
    if isinstance(taken, idempotency.Finished):
        return _replay_checkout(request, form, cart, taken.record)
    if not form.is_valid():  # a takeover of a request that died, resubmitted with other data
        return _render_checkout(request, form, cart, status=400)
    with taken.released_on_error():  # a resubmit after an error resumes at once
        status, error, order = _place_order(form, cart, taken)
    try:
        if status >= 500 or status == 202:
            taken.release()  # not final: a resubmit resumes (and may find the payment settled)
        else:
            taken.finish(status, {"error": error}, order=order)
    except idempotency.LeaseLost:
        logger.info("Checkout key %s was taken over; its retry records the answer", taken.record_id)
    return _checkout_answer(request, form, cart, status, error, order)


def _place_order(form: CheckoutForm, cart: Cart, lease: idempotency.Lease) -> tuple[int, str, Order | None]:
    """(status, error message, order) of placing the cart's order under the token's lease."""
    data = form.cleaned_data
    try:
        order = place_order(
            email=data["email"],
            name=data["name"],
            shipping_address=ShippingAddress(
                data["line1"], data["city"], data["postal_code"], data["country"]
            ),
            items=dict(cart.items),
            payment_token=data["payment_token"],
            lease=lease,
            actor=CUSTOMER,
        )
    except UnknownProduct as exc:
        for sku in exc.skus:
            cart.remove(sku)
        return 409, f"{exc} It was removed from your cart.", None
    except (InvalidOrder, OutOfStock) as exc:
        return 409, str(exc), None
    except PaymentGatewayError as exc:
        return 502, "The payment service is unavailable, please try again in a moment.", exc.order
    if order.status == Order.Status.PAYMENT_FAILED:
        return 402, f"Payment declined: {services.decline_reason(order)}", order
    if order.status == Order.Status.PENDING_PAYMENT:
        return 202, "", order  # 3-D Secure or processing: see _checkout_answer
    return 201, "", order


def _replay_checkout(
    request: HttpRequest, form: CheckoutForm, cart: Cart, record: IdempotencyKey
) -> HttpResponse:
    body = record.response_body or {}
    return _checkout_answer(request, form, cart, record.response_status, body.get("error", ""), record.order)


def _checkout_answer(
    request: HttpRequest, form: CheckoutForm, cart: Cart, status: int, error: str, order: Order | None
) -> HttpResponse:
    if status < 400:
        cart.clear()
        payment = order.latest_payment() if status == 202 else None
        if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION and payment.action_url:
            return redirect(payment.action_url)  # the bank's 3-D Secure page, which returns to us
        return redirect(order)
    form.is_valid()
    form.add_error("payment_token" if status == 402 else None, error)
    return _render_checkout(request, form, cart, status=status)


@require_GET
def order_detail(request: HttpRequest, token: str) -> HttpResponse:
    """The customer's order page: its progress, history and shipments come from the order's events and
    shipment rows (a fixed number of queries), never from job rows."""
    order = get_object_or_404(Order, token=token)
    events = customer_timeline(order)
    shipments = list(order.shipments.prefetch_related("lines__line"))
    context = {
        "order": order,
        "lines": order.lines.all(),
        "payment": order.latest_payment(),
        "steps": pipeline_steps(order, events),
        "events": [customer_view(event) for event in shown_to_customer(events)],
        "shipments": shipments,
        "can_cancel": services.can_cancel(order, shipments),
        "status_labels": dict(Order.Status.choices),
    }
    return render(request, "orders/order_detail.html", context)


@require_http_methods(["GET", "POST"])
def order_cancel(request: HttpRequest, token: str) -> HttpResponse:
    """The customer cancels their order: a confirmation page (GET), then the cancellation (POST, with
    the CSRF token). Refused, with the reason, once anything has shipped."""
    order = get_object_or_404(Order, token=token)
    error = ""
    if request.method == "POST":
        try:
            services.cancel_order(order, actor=CUSTOMER, reason="Cancelled by the customer")
        except services.InvalidTransition:
            error = "This order can no longer be cancelled: it has shipped or is not paid."
        else:
            return redirect(order)
    elif not services.can_cancel(order):
        error = "This order can no longer be cancelled: it has shipped or is not paid."
    return render(
        request, "orders/order_cancel.html", {"order": order, "error": error}, status=409 if error else 200
    )


@require_GET
def invoice_download(request: HttpRequest, token: str) -> FileResponse:
    """The order's invoice PDF; the order's token is the capability, as for the order page."""
    invoice = get_object_or_404(Invoice.objects.select_related("order"), order__token=token)
    return invoice_response(invoice)


def invoice_response(invoice: Invoice) -> FileResponse:
    try:
        handle = invoice.file.open("rb")
    except FileNotFoundError:
        raise Http404("The invoice file is missing.") from None
    return FileResponse(
        handle, as_attachment=True, filename=f"{invoice.number}.pdf", content_type="application/pdf"
    )
