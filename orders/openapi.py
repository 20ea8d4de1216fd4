"""The JSON API's contract: an OpenAPI 3.1 document built from the pydantic models of its request
bodies (``orders.api_schemas``) and of its responses (below), served at ``/api/openapi.json`` and as a
page at ``/api/docs``. The suite validates it (openapi-spec-validator) and fuzzes a live server against
it (schemathesis), so the models below are held to what ``orders.serializers`` really answers.
"""

import json
from functools import cache
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from orders.api_schemas import OrderIn
from orders.models import OrderStatus, Payment, ShipmentStatus
from orders.pipeline import STATE_LABELS, STEPS

Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{2}$", examples=["19.90"])]
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShippingAddressOut(_Out):
    line1: str
    city: str
    postal_code: str
    country: str


class OrderLineOut(_Out):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: Money


class PaymentOut(_Out):
    status: Literal[tuple(Payment.Status.values)]  # type: ignore[valid-type]
    amount: Money
    decline_reason: str
    action_url: str = Field(description="Where to send the customer for 3-D Secure; empty otherwise.")


class EventOut(_Out):
    """One step of the order's history, as the customer may see it."""

    kind: str
    label: str
    at: DateTime
    by: Literal["you", "shop"]
    facts: dict[str, Any]


class ShipmentLineOut(_Out):
    sku: str
    quantity: int


class ShipmentOut(_Out):
    status: Literal[tuple(ShipmentStatus.values)]  # type: ignore[valid-type]
    carrier: str
    tracking_number: str
    tracking_url: str
    shipped_at: DateTime | None
    delivered_at: DateTime | None
    lines: list[ShipmentLineOut]


class PipelineStepOut(_Out):
    step: Literal[tuple(step for step, _ in STEPS)]  # type: ignore[valid-type]
    label: str
    state: Literal[tuple(STATE_LABELS)]  # type: ignore[valid-type]
    state_label: str
    message: str
    at: DateTime | None
    download_url: str | None = Field(default=None, description="The invoice, once it is ready.")


class OrderOut(_Out):
    """An order as every response carrying one shows it."""

    number: str
    token: str = Field(description="The order's secret for GET /api/orders/{token}.")
    status: Literal[tuple(OrderStatus.values)]  # type: ignore[valid-type]
    email: str
    name: str
    shipping_address: ShippingAddressOut
    currency: str
    total: Money
    lines: list[OrderLineOut]
    payment: PaymentOut | None
    created_at: DateTime
    paid_at: DateTime | None
    pipeline: list[PipelineStepOut] = Field(description="Empty until the order is paid.")
    events: list[EventOut] = Field(description="The order's history, oldest first.")
    shipments: list[ShipmentOut]
    can_cancel: bool = Field(description="The customer may still cancel (nothing has shipped).")
    settled: bool = Field(description="Nothing is in progress: a page following the order may stop.")
    status_url: str
    page_url: str


class Error(_Out):
    """Every error: a machine-readable code and a sentence for people."""

    error: str = Field(examples=["invalid_request"])
    message: str


class InvalidRequest(Error):
    fields: dict[str, list[str]] | None = Field(default=None, description="Messages per field path.")


class OutOfStock(Error):
    sku: str
    available: int


class RateLimited(Error):
    retry_after: int = Field(description="Seconds; also in the Retry-After header.")


class WaitingForPayment(_Out):
    """Accepted, not settled: the customer must confirm the payment (3-D Secure) or the bank answers
    later. A retry with the same Idempotency-Key tells what it became."""

    status: Literal["requires_action", "processing"]
    action_url: str | None = Field(default=None, description="Where to send the customer (3-D Secure).")
    order: OrderOut


class WithOrder(Error):
    """The order as it stands (payment declined, or the gateway failed)."""

    order: OrderOut


def _response(description: str, *models: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    refs = [{"$ref": f"#/components/schemas/{model}"} for model in models]
    if refs:
        schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
        response["content"] = {"application/json": {"schema": schema}}
    if headers:
        response["headers"] = headers
    return response


EXAMPLE_ORDER = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "shipping_address": {
        "line1": "1 Analytical Street",
        "city": "London",
        "postal_code": "N1 9GU",
        "country": "GB",
    },
    "lines": [{"sku": "MUG-001", "quantity": 1}],
    "payment_token": "tok_visa",
}

_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Echoed in the response and carried by every log line of the request.",
    "schema": {"type": "string", "maxLength": 200},
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}
_COMMON = {
    "405": _response("Another method than the one documented.", "Error"),
    "500": _response("Internal error (reported; never carries details).", "Error"),
}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    models = [
        (OrderIn, "validation"),
        (OrderOut, "serialization"),
        (Error, "serialization"),
        (InvalidRequest, "serialization"),
        (OutOfStock, "serialization"),
        (RateLimited, "serialization"),
        (WithOrder, "serialization"),
        (WaitingForPayment, "serialization"),
    ]
    _, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{settings.SHOP_NAME} API",
            "version": "1",
            "description": "Place orders and follow them. Amounts are strings with two decimals.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/orders": {
                "post": {
                    "operationId": "createOrder",
                    "summary": "Place an order and charge it",
                    "description": (
                        "An `Idempotency-Key` makes retries safe: the same key and body replay the first "
                        "final answer (with `Idempotent-Replayed: true`) or resume the request where it "
                        "stopped; another body with the key is 422; a request still running with it is "
                        "409 with Retry-After. Each client is rate limited (429)."
                    ),
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        },
                        _REQUEST_ID,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/OrderIn"},
                                "examples": {"paid": {"summary": "A mug, paid", "value": EXAMPLE_ORDER}},
                            }
                        },
                    },
                    "responses": {
                        "201": _response("The order, paid.", "OrderOut"),
                        "202": _response(
                            "The payment waits for the customer (3-D Secure) or the bank (processing).",
                            "WaitingForPayment",
                        ),
                        "400": _response(
                            "Not JSON, an invalid body or Idempotency-Key, an unknown SKU.", "InvalidRequest"
                        ),
                        "402": _response("The payment was declined; the stock is released.", "WithOrder"),
                        "409": _response(
                            "Out of stock (`out_of_stock`), or a request with this Idempotency-Key is "
                            "still running (`request_in_progress`, with Retry-After).",
                            "OutOfStock",
                            "Error",
                            headers=_RETRY_AFTER,
                        ),
                        "413": _response("The body is larger than 1 MiB.", "Error"),
                        "422": _response("The Idempotency-Key was used with another body.", "Error"),
                        "429": _response(
                            "Too many requests from this client.", "RateLimited", headers=_RETRY_AFTER
                        ),
                        "502": _response(
                            "The payment gateway failed; nothing was charged twice.", "WithOrder"
                        ),
                        **_COMMON,
                    },
                }
            },
            "/api/orders/{token}": {
                "get": {
                    "operationId": "getOrder",
                    "summary": "An order and how far its pipeline has got",
                    "parameters": [
                        {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
                        _REQUEST_ID,
                    ],
                    "responses": {
                        "200": _response("The order.", "OrderOut"),
                        "404": _response("No order has this token.", "Error"),
                        **_COMMON,
                    },
                }
            },
        },
        "components": {"schemas": schemas["$defs"]},
    }


def openapi_json(request: HttpRequest) -> HttpResponse:
    return JsonResponse(document(), json_dumps_params={"indent": 2})


def openapi_page(request: HttpRequest) -> HttpResponse:
    """The contract for people: each operation with its parameters, body and answers."""
    doc = document()
    operations = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "op": op,
                    "body": _names(body)[0] if body else None,
                    "responses": [
                        (
                            status,
                            r["description"],
                            _names(r.get("content", {}).get("application/json", {}).get("schema")),
                        )
                        for status, r in op["responses"].items()
                    ],
                }
            )
    schemas = [(name, json.dumps(schema, indent=2)) for name, schema in doc["components"]["schemas"].items()]
    return render(request, "orders/api_docs.html", {"doc": doc, "operations": operations, "schemas": schemas})


def _names(schema: dict | None) -> list[str]:
    """The component names a response or body schema refers to."""
    if not schema:
        return []
    refs = schema.get("anyOf", [schema])
    return [ref["$ref"].rsplit("/", 1)[1] for ref in refs]
