"""The payment provider's doors: its webhook endpoint, the customer's return from 3-D Secure, and the
fake gateway's authentication page (test mode only)."""

import logging
from urllib.parse import urlsplit

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from orders import services
from orders.events import CUSTOMER
from orders.gateways import FakeGateway, GatewayError, InvalidSignature, get_gateway
from orders.models import FakeGatewayCharge, Order
from orders.payment_events import receive_event

logger = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 512 * 1024


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Verify the signature on the raw body, store the event once, enqueue its job, answer 2xx at once.
    A bad signature is 400 and stores nothing; a repeated event id is 200 and changes nothing."""
    if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_WEBHOOK_BYTES:
        return JsonResponse({"error": "too_large", "message": "The event is too large."}, status=413)
    signature = request.headers.get("Stripe-Signature", "")
    try:
        received = receive_event(request.body, signature)
    except InvalidSignature as exc:
        logger.warning("Refused a payment webhook: %s", exc)
        return JsonResponse({"error": "invalid_signature", "message": str(exc)}, status=400)
    return JsonResponse({"received": received.event.event_id, "duplicate": received.duplicate})


@require_GET
def payment_return(request: HttpRequest, token: str) -> HttpResponse:
    """Where 3-D Secure sends the customer back: ask the gateway what became of the payment, record it
    (the webhook may come before or after, either way once), and show the order page, which says
    paid, failed or still processing and keeps updating."""
    order = get_object_or_404(Order, token=token)
    try:
        services.settle_pending_payment(
            order, not_charged_reason="The payment was not completed.", actor=CUSTOMER
        )
    except GatewayError:
        logger.warning("Order %s: the gateway did not answer on the customer's return", order.number)
    return redirect(order)


@require_http_methods(["GET", "POST"])
def fake_authenticate(request: HttpRequest, reference: str) -> HttpResponse:
    """The fake gateway's 3-D Secure page: "Authenticate" or "Fail authentication", then back to the
    shop's return URL. Served only while the fake gateway is the one in use."""
    if not isinstance(get_gateway(), FakeGateway):
        raise Http404("No fake gateway here.")
    charge = get_object_or_404(FakeGatewayCharge, reference=reference)
    if request.method == "POST":
        outcome = request.POST.get("outcome")
        if outcome not in ("authenticate", "fail"):
            return render(
                request, "orders/fake_authenticate.html", {"charge": charge, "error": True}, status=400
            )
        FakeGateway().complete_action(reference, succeed=outcome == "authenticate")
        # The fake bank lives inside the shop: back to the return URL's path on this same host.
        return redirect(urlsplit(charge.return_url).path or "/")
    return render(request, "orders/fake_authenticate.html", {"charge": charge})
