"""The JSON API. It is not cookie-authenticated (so CSRF-exempt), and never answers with HTML."""

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from pydantic import ValidationError

from orders import idempotency, warehouse
from orders.api_schemas import OrderIn
from orders.events import CUSTOMER
from orders.models import IdempotencyKey, Order
from orders.serializers import order_to_dict
from orders.services import (
    InvalidOrder,
    OutOfStock,
    PaymentGatewayError,
    UnknownProduct,
    decline_reason,
    place_order,
)
from orders.webhooks import SIGNATURE_HEADER
from shop import throttle

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255


def error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "message": message, **extra}, status=status)


def api_view(*methods: str) -> Callable:
    """CSRF-exempt, JSON 405 for other methods, JSON 500 instead of Django's error page (503 with
    Retry-After when the database could not be reached, a retry may succeed)."""

    def decorator(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = error(405, "method_not_allowed", f"{request.method} is not allowed here.")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except (OperationalError, InterfaceError):
                raise  # the database is away: shop.middleware.DatabaseUnavailableMiddleware answers 503
            except Exception:
                logger.exception("API error on %s %s", request.method, request.path)
                return error(500, "server_error", "Internal server error.")

        return wrapped

    return decorator


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: JSON under /api/, Django's page elsewhere (used when DEBUG is off)."""
    if request.path.startswith("/api/"):
        return error(404, "not_found", "Not found.")
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (a disallowed Host header, a malformed request): JSON under /api/, like the others."""
    if request.path.startswith("/api/"):
        return error(400, "bad_request", "The request is malformed.")
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error(500, "server_error", "Internal server error.")
    return defaults.server_error(request)


@api_view("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    return error(404, "not_found", "No such API endpoint.")


@api_view("GET")
def order_detail(request: HttpRequest, token: str) -> JsonResponse:
    order = Order.objects.filter(token=token).first()
    if order is None:
        return error(404, "not_found", "No such order.")
    return JsonResponse(order_to_dict(order))


@api_view("POST")
def create_order(request: HttpRequest) -> JsonResponse:
    """Place an order. See ``OrderIn`` for the body; an ``Idempotency-Key`` header makes retries safe:
    the same key and body replays the first final response (2xx, 4xx), or resumes a request that failed
    with 5xx or died where it stopped (see ``orders.idempotency``); another body is 422; a request still
    running with that key is 409 with Retry-After. Each client is limited to ``settings.API_RATE_LIMIT``."""
    decision = throttle.check(request, "api-orders", "API_RATE_LIMIT")
    if not decision.allowed:
        response = error(
            429, "rate_limited", "Too many requests; retry later.", retry_after=decision.retry_after
        )
        response["Retry-After"] = str(decision.retry_after)
        return response
    try:
        # A declared length over DATA_UPLOAD_MAX_MEMORY_SIZE never gets here (RequestSizeLimitMiddleware);
        # Django refuses the rest as it reads (a body is never longer than its declared length).
        body = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error(413, "too_large", f"The body is larger than {limit} bytes.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return error(400, "invalid_json", "The body is not valid JSON.")
    if _holds_nul(data):  # PostgreSQL stores no NUL in text or jsonb: refuse it here, not with a 500
        return error(400, "invalid_request", "The body must not contain NUL characters.")

    key = request.headers.get("Idempotency-Key")
    if key is None:
        return _create_order(data)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return error(
            400, "invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters."
        )
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    taken = idempotency.take(IdempotencyKey.Scope.API, key, fingerprint)
    if isinstance(taken, idempotency.Mismatch):
        return error(422, "idempotency_key_reused", "This Idempotency-Key was used with a different body.")
    if isinstance(taken, idempotency.InProgress):
        return _in_progress(taken.retry_after)
    if isinstance(taken, idempotency.Finished):
        response = JsonResponse(taken.record.response_body, status=taken.record.response_status)
        response["Idempotent-Replayed"] = "true"
        return response
    return _create_order_with_lease(data, taken)


def _in_progress(retry_after: int) -> JsonResponse:
    response = error(409, "request_in_progress", "A request with this Idempotency-Key is in progress; retry.")
    response["Retry-After"] = str(retry_after)
    return response


def _create_order_with_lease(data: Any, lease: idempotency.Lease) -> JsonResponse:
    """Run (or resume) the request under the key's lease. A final answer is stored for replays; an error
    worth retrying (5xx) leaves the recovery point for the retry, which resumes from it."""
    try:
        with lease.released_on_error():
            response = _create_order(data, lease)
    except idempotency.LeaseLost:
        return _in_progress(1)
    try:
        if response.status_code >= 500 or response.status_code == 202:
            lease.release()  # not final: the retry resumes (and may find the payment settled)
        else:
            lease.finish(response.status_code, json.loads(response.content))
    except idempotency.LeaseLost:
        logger.info("Idempotency key %s was taken over; its retry records the answer", lease.record_id)
    return response


def _holds_nul(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _create_order(data: Any, lease: idempotency.Lease | None = None) -> JsonResponse:
    try:
        body = OrderIn.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"]) or "body"
            fields.setdefault(name, []).append(err["msg"])
        return error(400, "invalid_request", "The request body is invalid.", fields=fields)
    try:
        order = place_order(
            email=body.email,
            name=body.name,
            shipping_address=body.shipping_address.to_address(),
            items=body.items(),
            payment_token=body.payment_token,
            lease=lease,
            actor=CUSTOMER,
        )
    except UnknownProduct as exc:
        index = {line.sku: i for i, line in enumerate(body.lines)}
        fields = {f"lines.{index[sku]}.sku": ["Unknown or inactive SKU."] for sku in exc.skus}
        return error(400, "invalid_request", str(exc), fields=fields)
    except InvalidOrder as exc:
        return error(400, "invalid_request", str(exc))
    except OutOfStock as exc:
        return error(409, "out_of_stock", str(exc), sku=exc.sku, available=exc.available)
    except PaymentGatewayError as exc:
        return error(502, "gateway_error", str(exc), order=order_to_dict(exc.order))
    if order.status == Order.Status.PAYMENT_FAILED:
        return error(402, "payment_declined", decline_reason(order), order=order_to_dict(order))
    if order.status == Order.Status.PENDING_PAYMENT:
        # 3-D Secure or a processing payment: accepted, not settled. The customer's return, the
        # provider's webhook or a retry with the same key settles it; the order page shows it live.
        body = order_to_dict(order)
        waiting = {"status": body["payment"]["status"] if body["payment"] else "processing", "order": body}
        if body["payment"] and body["payment"]["action_url"]:
            waiting["action_url"] = body["payment"]["action_url"]
        return JsonResponse(waiting, status=202)
    return JsonResponse(order_to_dict(order), status=201)


MAX_WAREHOUSE_BYTES = 64 * 1024


@api_view("POST")
def warehouse_webhook(request: HttpRequest) -> JsonResponse:
    """The warehouse reports a shipment (see ``orders.warehouse``): verified on the raw body, stored
    once and applied by a job; 200 at once (``duplicate`` says whether it was seen before), or a 4xx
    JSON error that stores nothing."""
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_WAREHOUSE_BYTES:
            return error(413, "too_large", f"The body is larger than {MAX_WAREHOUSE_BYTES} bytes.")
        body = request.body
    except (ValueError, RequestDataTooBig):
        return error(413, "too_large", f"The body is larger than {MAX_WAREHOUSE_BYTES} bytes.")
    try:
        received = warehouse.receive(body, request.headers.get(SIGNATURE_HEADER, ""))
    except warehouse.WarehouseError as exc:
        logger.warning("Refused a warehouse callback: %s", exc.code)
        return error(exc.status, exc.code, str(exc), **exc.extra)
    return JsonResponse({"received": received.event.event_id, "duplicate": received.duplicate})
