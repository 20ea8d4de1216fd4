"""The HTML checkout and order page. The work is done by ``orders.services.place_order``."""

from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from orders.forms import CheckoutForm
from orders.models import Invoice, Order
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


def _render_checkout(request: HttpRequest, form: CheckoutForm, cart: Cart, status: int = 200) -> HttpResponse:
    lines = cart.lines()
    context = {"form": form, "lines": lines, "total": cart_total(lines)}
    return render(request, "orders/checkout.html", context, status=status)


@require_GET
def checkout(request: HttpRequest) -> HttpResponse:
    cart = Cart(request)
    if not cart.lines():
        return redirect("cart")
    return _render_checkout(request, CheckoutForm(), cart)


@require_POST
def create_order(request: HttpRequest) -> HttpResponse:
    cart = Cart(request)
    form = CheckoutForm(request.POST)
    if not cart.lines():
        form.add_error(None, "Your cart is empty.")
    if not form.is_valid():
        return _render_checkout(request, form, cart, status=400)
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
        )
    except UnknownProduct as exc:
        for sku in exc.skus:
            cart.remove(sku)
        form.add_error(None, f"{exc} It was removed from your cart.")
        return _render_checkout(request, form, cart, status=409)
    except (InvalidOrder, OutOfStock) as exc:
        form.add_error(None, str(exc))
        return _render_checkout(request, form, cart, status=409)
    except PaymentGatewayError:
        form.add_error(None, "The payment service is unavailable, please try again in a moment.")
        return _render_checkout(request, form, cart, status=502)
    if order.status == Order.Status.PAYMENT_FAILED:
        reason = order.payments.order_by("-id").first().decline_reason
        form.add_error("payment_token", f"Payment declined: {reason}")
        return _render_checkout(request, form, cart, status=402)
    cart.clear()
    return redirect(order)


@require_GET
def order_detail(request: HttpRequest, token: str) -> HttpResponse:
    order = get_object_or_404(Order, token=token)
    context = {
        "order": order,
        "lines": order.lines.all(),
        "payment": order.payments.order_by("-created_at", "-id").first(),
        "steps": pipeline_steps(order),
        "status_labels": dict(Order.Status.choices),
    }
    return render(request, "orders/order_detail.html", context)


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
