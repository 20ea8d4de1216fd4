"""Stripe behind the PaymentGateway interface, through the official SDK.

A charge is two requests so that settling a lost answer can never charge: (a) create the PaymentIntent
(idempotency key = the order number), which moves no money; (b) confirm it with the customer's payment
method (key ``<order number>-confirm``). ``retrieve`` replays (a) with the same key and parameters, which
returns the same PaymentIntent, and reads its state; a PaymentIntent that was never confirmed is
cancelled, so a confirmation still in flight cannot take money for an order we consider unpaid.

Stripe replays a repeated idempotency key with the *first* answer, not the current state, so a replayed
answer is followed by a fresh read.
"""

import functools
import json
from decimal import Decimal

import stripe
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orders.gateways import (
    ChargeResult,
    ChargeStatus,
    GatewayError,
    InvalidSignature,
    RefundResult,
    from_minor_units,
    minor_units,
)

# Stripe statuses of an unconfirmed PaymentIntent: no money has moved.
UNCONFIRMED = ("requires_payment_method", "requires_confirmation")
# The cancellation reason ``retrieve`` gives a PaymentIntent it found never confirmed.
ABANDONED = "abandoned"

_STATUSES = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "requires_capture": ChargeStatus.AUTHORIZED,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "processing": ChargeStatus.PROCESSING,
    "canceled": ChargeStatus.CANCELED,
    # After a failed confirmation (declined, 3-D Secure failed) Stripe asks for another method.
    "requires_payment_method": ChargeStatus.DECLINED,
    "requires_confirmation": ChargeStatus.DECLINED,
}

_REFUND_STATUSES = {
    "succeeded": "succeeded",
    "pending": "pending",
    "requires_action": "pending",
    "failed": "failed",
    "canceled": "failed",
}


class StripeGateway:
    """``token`` is a PaymentMethod id (``pm_card_visa``, ``pm_card_threeDSecure2Required``,
    ``pm_card_chargeDeclined``...) or a card token (``tok_visa``...), sent as ``payment_method_data``.

    Extra ``metadata`` passed to ``charge`` is not sent: the PaymentIntent's parameters must be exactly
    what ``retrieve`` can replay from the order number, amount and currency.
    """

    name = "stripe"

    def __init__(self) -> None:
        if not settings.STRIPE_SECRET_KEY:
            raise ImproperlyConfigured("STRIPE_SECRET_KEY must be set to use the Stripe gateway.")
        self.client = _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.HTTP_TIMEOUT)

    # -- charges ------------------------------------------------------------------------------------

    def charge(
        self,
        amount: Decimal,
        currency: str,
        token: str,
        idempotency_key: str,
        *,
        return_url: str = "",
        capture: bool = True,
        metadata: dict[str, str] | None = None,
    ) -> ChargeResult:
        intent = self._create(amount, currency, idempotency_key)
        if intent.status not in UNCONFIRMED or _replayed(intent):
            intent = self._call(self.client.v1.payment_intents.retrieve, intent.id)
            if intent.status not in UNCONFIRMED or intent.last_payment_error:
                # Confirmed before (this is a retry): its outcome, never a second confirmation.
                return self._result(intent)
        params = {"capture_method": "automatic" if capture else "manual"}
        if token.startswith("tok_"):
            params["payment_method_data"] = {"type": "card", "card": {"token": token}}
        else:
            params["payment_method"] = token
        if return_url:
            params["return_url"] = return_url
        try:
            intent = self._call(
                self.client.v1.payment_intents.confirm,
                intent.id,
                params,
                {"idempotency_key": f"{idempotency_key}-confirm"},
                passthrough=(stripe.CardError, stripe.InvalidRequestError),
            )
        except stripe.CardError as e:
            return self._declined(e, intent)
        except stripe.InvalidRequestError as e:
            if (e.param or "").startswith("payment_method"):  # an unknown or unusable payment method
                return self._declined(e, intent, "The payment method is invalid.")
            if e.code == "payment_intent_unexpected_state":  # e.g. cancelled meanwhile
                return self.retrieve(idempotency_key, reference=intent.id)
            raise GatewayError(str(e)) from e
        if _replayed(intent):
            intent = self._call(self.client.v1.payment_intents.retrieve, intent.id)
        return self._result(intent)

    def retrieve(
        self,
        idempotency_key: str,
        *,
        reference: str = "",
        amount: Decimal | None = None,
        currency: str = "",
    ) -> ChargeResult | None:
        if reference:
            intent = self._call(self.client.v1.payment_intents.retrieve, reference)
        else:
            if amount is None or not currency:
                raise ValueError("retrieve by idempotency key needs the charge's amount and currency")
            intent = self._create(amount, currency, idempotency_key)
            intent = self._call(self.client.v1.payment_intents.retrieve, intent.id)
        if intent.status in UNCONFIRMED and not intent.last_payment_error:
            # Never confirmed, so never charged. Cancelled so that a confirmation still on its way
            # (the lost request) fails instead of taking money for an order we settle as unpaid.
            intent = self._cancel(intent.id, f"{idempotency_key}-abandon", ABANDONED)
        if _abandoned(intent):
            return None
        return self._result(intent)

    def capture(self, reference: str, idempotency_key: str) -> ChargeResult:
        try:
            intent = self._call(
                self.client.v1.payment_intents.capture,
                reference,
                {},
                {"idempotency_key": idempotency_key},
                passthrough=(stripe.InvalidRequestError,),
            )
        except stripe.InvalidRequestError as e:
            if e.code != "payment_intent_unexpected_state":
                raise GatewayError(str(e)) from e
            intent = self._call(self.client.v1.payment_intents.retrieve, reference)
        return self._result(intent)

    def cancel(self, reference: str, idempotency_key: str) -> ChargeResult:
        return self._result(self._cancel(reference, idempotency_key))

    # -- refunds ------------------------------------------------------------------------------------

    def refund(self, reference: str, idempotency_key: str, amount: Decimal | None = None) -> RefundResult:
        params: dict = {"payment_intent": reference}
        if amount is not None:
            intent = self._call(self.client.v1.payment_intents.retrieve, reference)
            params["amount"] = minor_units(amount, intent.currency)
        try:
            refund = self._call(
                self.client.v1.refunds.create,
                params,
                {"idempotency_key": idempotency_key},
                passthrough=(stripe.InvalidRequestError,),
            )
        except stripe.InvalidRequestError as e:
            # Refused (more than is left, already refunded, not captured): nothing was refunded.
            return RefundResult(
                reference="", amount=amount or Decimal(0), status="failed", failure_reason=str(e.user_message)
            )
        return RefundResult(
            reference=refund.id,
            amount=from_minor_units(refund.amount, refund.currency),
            status=_REFUND_STATUSES.get(refund.status or "", "pending"),
            failure_reason=getattr(refund, "failure_reason", None) or "",
        )

    def refund_status(self, reference: str) -> tuple[str, str]:
        refund = self._call(self.client.v1.refunds.retrieve, reference)
        return (
            _REFUND_STATUSES.get(refund.status or "", "pending"),
            getattr(refund, "failure_reason", None) or "",
        )

    # -- webhooks -----------------------------------------------------------------------------------

    def verify_webhook(self, payload: bytes, signature: str) -> dict:
        """Stripe's scheme: ``Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of "t.payload">``, refused
        when older than the SDK's tolerance (300 s), so a captured event cannot be replayed later."""
        try:
            stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
            return json.loads(payload)
        except (stripe.SignatureVerificationError, ValueError) as e:
            raise InvalidSignature(str(e)) from e

    # -- helpers ------------------------------------------------------------------------------------

    def _create(self, amount: Decimal, currency: str, idempotency_key: str):
        """Step (a): the same parameters for the same key on every call, so Stripe replays it."""
        params = {
            "amount": minor_units(amount, currency),
            "currency": currency.lower(),
            "metadata": {"order_number": idempotency_key},
            "payment_method_types": ["card"],
        }
        return self._call(self.client.v1.payment_intents.create, params, {"idempotency_key": idempotency_key})

    def _cancel(self, reference: str, idempotency_key: str, reason: str = ""):
        params = {"cancellation_reason": reason} if reason else {}
        try:
            return self._call(
                self.client.v1.payment_intents.cancel,
                reference,
                params,
                {"idempotency_key": idempotency_key},
                passthrough=(stripe.InvalidRequestError,),
            )
        except stripe.InvalidRequestError as e:
            if e.code != "payment_intent_unexpected_state":
                raise GatewayError(str(e)) from e
            # Succeeded (or was cancelled) meanwhile: what it is now.
            return self._call(self.client.v1.payment_intents.retrieve, reference)

    @staticmethod
    def _call(method, *args, passthrough: tuple[type[Exception], ...] = ()):
        """One SDK call. Errors in ``passthrough`` (card and request errors) are the caller's to map;
        any other is a GatewayError: network, timeout, 5xx, 429, authentication, an idempotency
        conflict, or a request refused where none should be (an unknown PaymentIntent)."""
        try:
            return method(*args)
        except passthrough:
            raise
        except stripe.StripeError as e:
            raise GatewayError(str(e.user_message or e)) from e

    @staticmethod
    def _result(intent) -> ChargeResult:
        status = _STATUSES.get(intent.status)
        if status is None:
            raise GatewayError(f"Unexpected PaymentIntent status {intent.status!r}")
        action_url = ""
        if status == ChargeStatus.REQUIRES_ACTION and intent.next_action:
            redirect = getattr(intent.next_action, "redirect_to_url", None)
            action_url = (redirect and redirect.url) or ""
        reason = code = ""
        error = intent.last_payment_error if status == ChargeStatus.DECLINED else None
        if error:
            reason = getattr(error, "message", None) or "Your card was declined."
            code = getattr(error, "decline_code", None) or getattr(error, "code", None) or ""
        return ChargeResult(
            succeeded=status == ChargeStatus.SUCCEEDED,
            reference=intent.id,
            amount=from_minor_units(intent.amount, intent.currency),
            currency=intent.currency.upper(),
            status=status,
            action_url=action_url,
            decline_reason=reason,
            decline_code=code,
        )

    @staticmethod
    def _declined(error: stripe.StripeError, intent, reason: str = "") -> ChargeResult:
        body = (error.json_body or {}).get("error", {})
        return ChargeResult(
            succeeded=False,
            reference=(body.get("payment_intent") or {}).get("id") or intent.id,
            amount=from_minor_units(intent.amount, intent.currency),
            currency=intent.currency.upper(),
            status=ChargeStatus.DECLINED,
            decline_reason=reason or body.get("message") or "Your card was declined.",
            decline_code=body.get("decline_code") or body.get("code") or "",
        )


@functools.lru_cache(maxsize=8)
def _client(api_key: str, api_base: str, timeout: float) -> stripe.StripeClient:
    """One client per process (and settings), so requests reuse their connections to Stripe (its
    sessions are per thread). No retries inside the SDK: a lost answer is settled by ``retrieve``, the
    caller's recovery; each call is bounded by HTTP_TIMEOUT instead of the SDK's 80 s."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _abandoned(intent) -> bool:
    """Cancelled by ``retrieve`` before any confirmation: never charged."""
    return (
        intent.status == "canceled"
        and intent.cancellation_reason == ABANDONED
        and not intent.latest_charge
        and not intent.last_payment_error
    )


def _replayed(obj) -> bool:
    """Stripe answered a repeated idempotency key with its stored first answer."""
    response = getattr(obj, "last_response", None)
    return bool(response and (response.headers or {}).get("Idempotent-Replayed") == "true")
