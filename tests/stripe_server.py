"""A Stripe-compatible HTTP server on 127.0.0.1 for tests: the PaymentIntent and Refund endpoints our
gateway uses, with Stripe's form-encoded parameters, JSON objects, error bodies and idempotency keys
(shapes from Stripe's OpenAPI description, tests/stripe_reference/openapi-subset.json).

Payment methods behave as in Stripe's test mode: ``pm_card_visa`` succeeds, ``pm_card_threeDSecure2Required``
asks for 3-D Secure, ``pm_card_chargeDeclined`` and ``pm_card_chargeDeclinedInsufficientFunds`` are
declined (``tok_...`` tokens likewise, as ``payment_method_data[card][token]``). A test changes what
happens with ``outcome(payment_method, ...)`` and ``script(operation, ...)``, finishes 3-D Secure with
``complete_3ds``, a processing payment with ``settle``, and signs events with ``webhook``.
"""

import copy
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

REFERENCE = Path(__file__).parent / "stripe_reference" / "openapi-subset.json"
API_VERSION = "2023-08-16"

# Scripted answers (``script``):
TIMEOUT = "timeout"  # the request is held unanswered and never processed: the client times out
LOST = "lost"  # the request is processed, then its answer is held: the effect happened, the answer is lost
# ... or an HTTP status (500, 503, 429): answered with Stripe's error body, nothing processed or stored.

OUTCOMES = ("succeeded", "requires_action", "processing", "generic_decline", "insufficient_funds")
DEFAULT_OUTCOMES = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_threeDSecure2Required": "requires_action",
    "pm_card_threeDSecureRequired": "requires_action",
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
TOKENS = {  # card tokens and the PaymentMethod they stand for
    "tok_visa": "pm_card_visa",
    "tok_mastercard": "pm_card_mastercard",
    "tok_threeDSecure2Required": "pm_card_threeDSecure2Required",
    "tok_chargeDeclined": "pm_card_chargeDeclined",
    "tok_chargeDeclinedInsufficientFunds": "pm_card_chargeDeclinedInsufficientFunds",
}
DECLINES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}
AUTHENTICATION_FAILURE = {
    "type": "invalid_request_error",
    "code": "payment_intent_authentication_failure",
    "message": "The provided PaymentMethod has failed authentication. You can provide payment_method_data "
    "or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
}
CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
CANCELLATION_REASONS = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")

ROUTES = [  # (method, path pattern, operation name, OpenAPI operation)
    ("POST", "/v1/payment_intents", "create", "POST /v1/payment_intents"),
    ("POST", "/v1/payment_intents/*/confirm", "confirm", "POST /v1/payment_intents/{intent}/confirm"),
    ("POST", "/v1/payment_intents/*/capture", "capture", "POST /v1/payment_intents/{intent}/capture"),
    ("POST", "/v1/payment_intents/*/cancel", "cancel", "POST /v1/payment_intents/{intent}/cancel"),
    ("GET", "/v1/payment_intents/*", "retrieve", "GET /v1/payment_intents/{intent}"),
    ("POST", "/v1/refunds", "refund", "POST /v1/refunds"),
    ("GET", "/v1/refunds/*", "retrieve_refund", "GET /v1/refunds/{refund}"),
]


def load_reference() -> dict:
    return json.loads(REFERENCE.read_text())


class StripeError(Exception):
    def __init__(self, status: int, type: str, message: str, **fields):
        self.status = status
        self.body = {"error": {"type": type, "message": message, **{k: v for k, v in fields.items() if v}}}


def _parse_form(body: str) -> dict:
    """Stripe's form encoding: ``a[b][c]=x``, ``list[0]=x`` or ``list[]=x``."""
    root: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = [key.split("[", 1)[0]] + [p.rstrip("]") for p in key.split("[")[1:]]
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Request:
    method: str
    path: str
    operation: str
    idempotency_key: str
    params: dict
    status: int = 0  # the status answered (0: held unanswered)
    replayed: bool = False


@dataclass
class Signed:
    """A webhook event as Stripe sends it: the raw body and its ``Stripe-Signature`` header."""

    event: dict
    body: bytes
    signature: str
    headers: dict = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.server.owner.handle(self, "GET")

    def do_POST(self):  # noqa: N802
        self.server.owner.handle(self, "POST")

    def do_DELETE(self):  # noqa: N802
        self.server.owner.handle(self, "DELETE")

    def log_message(self, format, *args):  # quiet
        pass


class StripeServer:
    """State is in memory: ``payment_intents`` and ``refunds`` by id, ``requests`` (every request with
    the status answered) and ``ledger`` (the operations that executed, not replays or scripted errors)."""

    def __init__(self, api_key: str = "sk_test_local", webhook_secret: str = "whsec_local_test_secret"):
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.operations = load_reference()["operations"]
        self.payment_intents: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.charges: dict[str, dict] = {}  # charge id -> payment intent id
        self.requests: list[Request] = []
        self.ledger: list[tuple[str, str, str]] = []  # (operation, object id, idempotency key)
        self.returned: list[tuple[int, dict]] = []  # every JSON body answered, for schema checks
        self.outcomes = dict(DEFAULT_OUTCOMES)
        self.refund_status = "succeeded"
        self._scripts: dict[str, list] = {}
        self._idempotency: dict[str, tuple] = {}  # key -> (method, path, params, status, body)
        self._times = itertools.count(int(time.time()))
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def environ(self) -> dict[str, str]:
        """The settings pointing at this server, for processes a test starts (workers, web)."""
        return {
            "STRIPE_API_BASE": self.url,
            "STRIPE_SECRET_KEY": self.api_key,
            "STRIPE_WEBHOOK_SECRET": self.webhook_secret,
        }

    def stop(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    # -- what a test tells the server ---------------------------------------------------------------

    def outcome(self, payment_method: str, outcome: str) -> None:
        """What confirming with ``payment_method`` does from now on: one of OUTCOMES."""
        assert outcome in OUTCOMES, outcome
        self.outcomes[payment_method] = outcome

    def script(self, operation: str, *answers) -> None:
        """The next requests of ``operation`` (create, confirm, retrieve, capture, cancel, refund,
        retrieve_refund) are answered TIMEOUT, LOST or with an HTTP error status (500, 429...), in order;
        ``None`` answers normally. Later requests are answered normally."""
        assert operation in {r[2] for r in ROUTES}, operation
        with self.lock:
            self._scripts.setdefault(operation, []).extend(answers)

    def count(self, operation: str, object_id: str | None = None) -> int:
        """How many times ``operation`` executed (for ``object_id``): replays and scripted errors do not
        count. ``count("confirm")`` is the number of confirmations: the charges attempted."""
        with self.lock:
            return sum(1 for op, oid, _ in self.ledger if op == operation and object_id in (None, oid))

    def complete_3ds(self, intent_id: str, succeed: bool = True) -> dict:
        """The customer passes (or fails) 3-D Secure for a PaymentIntent in requires_action."""
        with self.lock:
            intent = self.payment_intents[intent_id]
            assert intent["status"] == "requires_action", intent["status"]
            intent["next_action"] = None
            if succeed:
                self._succeed(intent)
            else:
                self._fail(intent, dict(AUTHENTICATION_FAILURE))
            return copy.deepcopy(intent)

    def settle(self, intent_id: str, succeed: bool = True, decline_code: str = "generic_decline") -> dict:
        """The bank answers a PaymentIntent that is processing."""
        with self.lock:
            intent = self.payment_intents[intent_id]
            assert intent["status"] == "processing", intent["status"]
            intent["processing"] = None
            if succeed:
                self._succeed(intent)
            else:
                self._fail(intent, self._decline_error(decline_code))
            return copy.deepcopy(intent)

    def settle_refund(self, refund_id: str, succeed: bool = True) -> dict:
        """A pending refund succeeds or fails (``refund_status = "pending"`` makes refunds pending)."""
        with self.lock:
            refund = self.refunds[refund_id]
            refund["status"] = "succeeded" if succeed else "failed"
            if not succeed:
                refund["failure_reason"] = "expired_or_canceled_card"
                self.payment_intents[refund["payment_intent"]]["_refunded"] -= refund["amount"]
            return copy.deepcopy(refund)

    # -- webhook events -----------------------------------------------------------------------------

    def event(self, type: str, obj: str | dict, **previous_attributes) -> dict:
        """An event of ``type`` about ``obj`` (a dict, or the id of a PaymentIntent or Refund here):
        payment_intent.* carry the PaymentIntent, charge.refunded its charge, refund.* the refund,
        charge.dispute.created a dispute of its charge."""
        with self.lock:
            if isinstance(obj, str):
                if type.startswith("payment_intent."):
                    obj = self.payment_intent(obj)
                elif type.startswith("refund."):
                    obj = self.refund(obj)
                elif type.startswith("charge.dispute."):
                    obj = self.dispute(obj)
                elif type.startswith("charge."):
                    obj = self.charge(obj)
                else:
                    raise ValueError(f"no object for {type}")
            data = {"object": copy.deepcopy(obj)}
            if previous_attributes:
                data["previous_attributes"] = previous_attributes
            return {
                "id": _id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": int(time.time()),
                "data": data,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": type,
            }

    def sign(self, body: bytes, timestamp: int | None = None, secret: str | None = None) -> str:
        """Stripe's ``Stripe-Signature`` header: t=<unix time>,v1=<HMAC-SHA256 of "t.body">."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        secret = self.webhook_secret if secret is None else secret
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={mac}"

    def webhook(
        self, type_or_event: str | dict, obj: str | dict | None = None, *, timestamp=None, secret=None
    ) -> Signed:
        """A signed event ready to POST: ``client.post(url, s.body, content_type="application/json",
        headers=s.headers)``. ``type_or_event`` is an event type (with ``obj``) or a built event."""
        event = type_or_event if isinstance(type_or_event, dict) else self.event(type_or_event, obj)
        body = json.dumps(event, indent=2).encode()
        signature = self.sign(body, timestamp, secret)
        return Signed(event, body, signature, {"Stripe-Signature": signature})

    # -- objects ------------------------------------------------------------------------------------

    def payment_intent(self, intent_id: str) -> dict:
        with self.lock:
            return {k: v for k, v in copy.deepcopy(self.payment_intents[intent_id]).items() if k[0] != "_"}

    def refund(self, refund_id: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.refunds[refund_id])

    def charge(self, intent_or_charge_id: str) -> dict:
        with self.lock:
            intent = (
                self.payment_intents.get(intent_or_charge_id)
                or self.payment_intents[self.charges[intent_or_charge_id]]
            )
            assert intent["latest_charge"], "the PaymentIntent has no charge"
            refunds = [r for r in self.refunds.values() if r["payment_intent"] == intent["id"]]
            captured = intent["amount_received"]
            refunded = sum(r["amount"] for r in refunds if r["status"] in ("succeeded", "pending"))
            return {
                "id": intent["latest_charge"],
                "object": "charge",
                "amount": intent["amount"],
                "amount_captured": captured,
                "amount_refunded": refunded,
                "application": None,
                "application_fee": None,
                "application_fee_amount": None,
                "balance_transaction": None,
                "billing_details": {"address": None, "email": None, "name": None, "phone": None},
                "calculated_statement_descriptor": None,
                "captured": captured > 0,
                "created": intent["created"],
                "currency": intent["currency"],
                "customer": None,
                "description": None,
                "disputed": False,
                "failure_balance_transaction": None,
                "failure_code": None,
                "failure_message": None,
                "fraud_details": {},
                "invoice": None,
                "livemode": False,
                "metadata": dict(intent["metadata"]),
                "on_behalf_of": None,
                "outcome": None,
                "paid": intent["status"] in ("succeeded", "requires_capture"),
                "payment_intent": intent["id"],
                "payment_method": intent["payment_method"],
                "payment_method_details": None,
                "receipt_email": None,
                "receipt_number": None,
                "receipt_url": None,
                "refunded": captured > 0 and refunded >= captured,
                "refunds": {
                    "object": "list",
                    "data": copy.deepcopy(refunds),
                    "has_more": False,
                    "url": f"/v1/charges/{intent['latest_charge']}/refunds",
                },
                "review": None,
                "shipping": None,
                "source_transfer": None,
                "statement_descriptor": None,
                "statement_descriptor_suffix": None,
                "status": "succeeded" if captured or intent["status"] == "requires_capture" else "failed",
                "transfer_data": None,
                "transfer_group": None,
            }

    def dispute(self, intent_or_charge_id: str, reason: str = "fraudulent") -> dict:
        with self.lock:
            charge = self.charge(intent_or_charge_id)
            dispute = copy.deepcopy(load_reference()["fixtures"]["dispute"])
            dispute.update(
                id=_id("dp"),
                amount=charge["amount_captured"],
                charge=charge["id"],
                currency=charge["currency"],
                created=int(time.time()),
                payment_intent=charge["payment_intent"],
                reason=reason,
                status="needs_response",
                is_charge_refundable=False,
                metadata={},
            )
            return dispute

    # -- the HTTP side ------------------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        if method == "GET" and split.path.startswith("/3ds/"):
            return self._authenticate_page(handler, split)
        params = _parse_form(body if method == "POST" else split.query)
        route = self._route(method, split.path)
        key = handler.headers.get("Idempotency-Key", "")
        request = Request(method, split.path, route[2] if route else "", key, params)
        with self.lock:
            self.requests.append(request)
            script = self._scripts.get(request.operation)
            answer = script.pop(0) if script else None
        if answer == TIMEOUT:
            self.stopped.wait(60)
            return
        try:
            if isinstance(answer, int):
                raise StripeError(
                    answer,
                    "api_error" if answer >= 500 else "invalid_request_error",
                    "An unknown error occurred" if answer >= 500 else "Too many requests.",
                    code="rate_limit" if answer == 429 else "",
                )
            status, payload, replayed = self._answer(handler, method, split.path, route, key, params)
        except StripeError as e:
            status, payload, replayed = e.status, e.body, False
        request.status, request.replayed = status, replayed
        if answer == LOST:
            request.status = 0
            self.stopped.wait(60)
            return
        with self.lock:
            self.returned.append((status, copy.deepcopy(payload)))
        headers = {"Request-Id": _id("req")}
        if key:
            headers["Idempotency-Key"] = key
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        self._send(handler, status, payload, headers)

    def _send(self, handler, status: int, payload: dict, headers: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Stripe-Version", API_VERSION)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up
            pass

    def _route(self, method: str, path: str):
        parts = path.strip("/").split("/")
        for route in ROUTES:
            pattern = route[1].strip("/").split("/")
            if route[0] == method and len(pattern) == len(parts):
                if all(p == "*" or p == q for p, q in zip(pattern, parts, strict=True)):
                    return route
        return None

    def _answer(self, handler, method, path, route, key, params):
        """(status, body, replayed) of one API request, after authentication and idempotency."""
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise StripeError(
                401,
                "invalid_request_error",
                "Invalid API Key provided: " + handler.headers.get("Authorization", "")[7:15] + "****",
            )
        if route is None:
            raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        allowed = self.operations[route[3]]
        for name in params:
            if name not in allowed["params"]:
                raise StripeError(
                    400, "invalid_request_error", f"Received unknown parameter: {name}", param=name
                )
        if method == "GET":
            with self.lock:
                return 200, self._execute(route[2], path, params, key), False
        if not key:
            raise StripeError(
                400,
                "invalid_request_error",
                "This server requires an Idempotency-Key header on every POST request.",
                code="parameter_missing",
            )
        with self.lock:
            stored = self._idempotency.get(key)
            if stored is not None:
                if stored[:3] != (method, path, params):
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were "
                        f"first used with. Try using a key other than '{key}' if you meant to execute a "
                        "different request.",
                    )
                return stored[3], copy.deepcopy(stored[4]), True
            for name in allowed.get("required", []):
                if name not in params:  # a validation error: not stored, like Stripe
                    raise StripeError(
                        400,
                        "invalid_request_error",
                        f"Missing required param: {name}.",
                        code="parameter_missing",
                        param=name,
                    )
            try:
                status, payload = 200, self._execute(route[2], path, params, key)
            except StripeError as e:
                if e.status == 400 and e.body["error"].get("code") == "parameter_invalid_integer":
                    raise
                status, payload = e.status, e.body
            self._idempotency[key] = (method, path, copy.deepcopy(params), status, copy.deepcopy(payload))
            return status, payload, False

    # -- the operations (called with the lock held) -------------------------------------------------

    def _execute(self, operation: str, path: str, params: dict, key: str) -> dict:
        object_id = path.strip("/").split("/")[2] if path.count("/") >= 3 else ""
        if operation == "create":
            result = self._create(params)
        elif operation == "retrieve_refund":
            if object_id not in self.refunds:
                raise StripeError(
                    404, "invalid_request_error", f"No such refund: '{object_id}'", code="resource_missing"
                )
            return self.refund(object_id)
        else:
            if object_id not in self.payment_intents and operation != "refund":
                raise StripeError(
                    404,
                    "invalid_request_error",
                    f"No such payment_intent: '{object_id}'",
                    code="resource_missing",
                    param="intent",
                )
            if operation == "retrieve":
                return self.payment_intent(object_id)
            result = getattr(self, f"_{operation}")(object_id, params)
        self.ledger.append((operation, result["id"], key))
        return result

    def _create(self, params: dict) -> dict:
        amount = self._integer(params, "amount")
        if amount < 1:
            raise StripeError(
                400,
                "invalid_request_error",
                "Amount must be at least 1.",
                code="amount_too_small",
                param="amount",
            )
        currency = params["currency"].lower()
        if len(currency) != 3:
            raise StripeError(
                400, "invalid_request_error", f"Invalid currency: {currency}.", param="currency"
            )
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            raise StripeError(400, "invalid_request_error", "Invalid capture_method.", param="capture_method")
        intent_id = _id("pi")
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": next(self._times),
            "currency": currency,
            "customer": None,
            "description": params.get("description"),
            "invoice": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(params.get("metadata") or {}),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_options": {},
            "payment_method_types": list(params.get("payment_method_types") or ["card"]),
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
            "_refunded": 0,
        }
        self.payment_intents[intent_id] = intent
        if params.get("payment_method") or params.get("payment_method_data"):
            intent["status"] = "requires_confirmation"
        if params.get("confirm") == "true":
            return self._confirm(intent_id, params)
        return self.payment_intent(intent_id)

    def _confirm(self, intent_id: str, params: dict) -> dict:
        intent = self.payment_intents[intent_id]
        if intent["status"] not in ("requires_payment_method", "requires_confirmation"):
            self._unexpected_state(intent, "confirm")
        payment_method = params.get("payment_method") or intent["payment_method"]
        data = params.get("payment_method_data")
        if data:
            if data.get("type") != "card" or not isinstance(data.get("card"), dict):
                raise StripeError(
                    400, "invalid_request_error", "Invalid payment_method_data.", param="payment_method_data"
                )
            token = data["card"].get("token", "")
            if token not in TOKENS:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"No such token: '{token}'",
                    code="resource_missing",
                    param="payment_method_data[card][token]",
                )
            payment_method = TOKENS[token]
        if not payment_method:
            raise StripeError(
                400,
                "invalid_request_error",
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        if payment_method not in self.outcomes:
            raise StripeError(
                400,
                "invalid_request_error",
                f"No such PaymentMethod: '{payment_method}'",
                code="resource_missing",
                param="payment_method",
            )
        if "capture_method" in params:
            intent["capture_method"] = params["capture_method"]
        intent["payment_method"] = payment_method
        intent["last_payment_error"] = None
        outcome = self.outcomes[payment_method]
        if outcome == "succeeded":
            self._succeed(intent)
        elif outcome == "requires_action":
            intent["status"] = "requires_action"
            intent["_return_url"] = params.get("return_url")
            intent["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": f"{self.url}/3ds/{intent_id}",
                    "return_url": params.get("return_url"),
                },
            }
        elif outcome == "processing":
            intent["status"] = "processing"
            intent["processing"] = {"type": "card"}
        else:
            self._fail(intent, self._decline_error(outcome))
            error = dict(intent["last_payment_error"])
            raise StripeError(402, payment_intent=self.payment_intent(intent_id), **error)
        return self.payment_intent(intent_id)

    def _capture(self, intent_id: str, params: dict) -> dict:
        intent = self.payment_intents[intent_id]
        if intent["status"] != "requires_capture":
            self._unexpected_state(intent, "capture")
        amount = (
            self._integer(params, "amount_to_capture") if "amount_to_capture" in params else intent["amount"]
        )
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        return self.payment_intent(intent_id)

    def _cancel(self, intent_id: str, params: dict) -> dict:
        intent = self.payment_intents[intent_id]
        if intent["status"] not in CANCELABLE:
            self._unexpected_state(intent, "cancel")
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise StripeError(
                400, "invalid_request_error", "Invalid cancellation_reason.", param="cancellation_reason"
            )
        intent.update(
            status="canceled",
            canceled_at=int(time.time()),
            cancellation_reason=reason,
            next_action=None,
            processing=None,
            amount_capturable=0,
        )
        return self.payment_intent(intent_id)

    def _refund(self, _object_id: str, params: dict) -> dict:
        intent_id = params.get("payment_intent") or self.charges.get(params.get("charge", ""))
        if not intent_id:
            raise StripeError(
                400,
                "invalid_request_error",
                "One of `charge` or `payment_intent` is required.",
                code="parameter_missing",
            )
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise StripeError(
                400,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        if intent["status"] != "succeeded":
            raise StripeError(
                400,
                "invalid_request_error",
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                code="charge_not_refundable"
                if intent["status"] != "canceled"
                else "payment_intent_unexpected_state",
            )
        left = intent["amount_received"] - intent["_refunded"]
        if left <= 0:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = self._integer(params, "amount") if "amount" in params else left
        if amount > left:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                code="amount_too_large",
                param="amount",
            )
        intent["_refunded"] += amount
        refund = {
            "id": _id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": intent["latest_charge"],
            "created": int(time.time()),
            "currency": intent["currency"],
            "metadata": dict(params.get("metadata") or {}),
            "payment_intent": intent_id,
            "reason": params.get("reason"),
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": self.refund_status,
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        return self.refund(refund["id"])

    def _succeed(self, intent: dict) -> None:
        charge_id = _id("ch")
        self.charges[charge_id] = intent["id"]
        intent["latest_charge"] = charge_id
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
        else:
            intent.update(status="succeeded", amount_received=intent["amount"])

    def _fail(self, intent: dict, error: dict) -> None:
        if error.get("type") == "card_error":
            charge_id = _id("ch")  # a declined charge exists at Stripe too
            self.charges[charge_id] = intent["id"]
            intent["latest_charge"] = charge_id
            error["charge"] = charge_id
        intent.update(status="requires_payment_method", last_payment_error=error)

    @staticmethod
    def _decline_error(decline_code: str) -> dict:
        return {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": DECLINES.get(decline_code, "Your card was declined."),
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        }

    def _unexpected_state(self, intent: dict, action: str):
        raise StripeError(
            400,
            "invalid_request_error",
            f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}.",
            code="payment_intent_unexpected_state",
            payment_intent=self.payment_intent(intent["id"]),
        )

    @staticmethod
    def _integer(params: dict, name: str) -> int:
        value = params.get(name)
        if not isinstance(value, str) or not value.lstrip("-").isdigit():
            raise StripeError(
                400,
                "invalid_request_error",
                f"Invalid integer: {value}",
                code="parameter_invalid_integer",
                param=name,
            )
        return int(value)

    def _authenticate_page(self, handler, split) -> None:
        """Where ``next_action.redirect_to_url.url`` points: ``?result=fail`` fails authentication, else
        it passes; then back to the return URL with the PaymentIntent's id, as Stripe does."""
        intent_id = split.path.rsplit("/", 1)[-1]
        succeed = dict(parse_qsl(split.query)).get("result") != "fail"
        with self.lock:
            intent = self.payment_intents.get(intent_id)
            if intent is None or intent["status"] != "requires_action":
                return self._send(handler, 404, {"error": {"type": "invalid_request_error"}}, {})
            return_url = intent.get("_return_url") or ""
            self.complete_3ds(intent_id, succeed)
        query = urlencode(
            {
                "payment_intent": intent_id,
                "payment_intent_client_secret": intent["client_secret"],
                "redirect_status": "succeeded" if succeed else "failed",
            }
        )
        handler.send_response(302)
        handler.send_header("Location", f"{return_url}{'&' if '?' in return_url else '?'}{query}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
