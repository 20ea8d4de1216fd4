"""Payment gateways behind one interface, chosen by ``settings.PAYMENT_GATEWAY`` (a dotted path).

A gateway is called outside any database transaction. Every charge carries an idempotency key (the
order number), so a retried request never charges twice and ``retrieve`` can later tell what became of
a charge whose answer was lost.
"""

import hashlib
import json
import secrets
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string


class GatewayError(Exception):
    """The gateway could not give an answer (network, outage, processing error). The charge may or may
    not have happened; ask ``retrieve`` later."""


class InvalidSignature(Exception):
    """A payment-provider webhook whose signature does not verify (or is too old): refuse it."""


class ChargeStatus:
    SUCCEEDED = "succeeded"  # the money is captured
    AUTHORIZED = "authorized"  # the money is held, to be captured later (PAYMENT_CAPTURE=on_fulfilment)
    DECLINED = "declined"  # nothing was charged; ``decline_reason`` says why, for the customer
    REQUIRES_ACTION = "requires_action"  # 3-D Secure: send the customer to ``action_url``
    PROCESSING = "processing"  # the bank answers later (a webhook settles it)
    CANCELED = "canceled"  # cancelled before it was captured: nothing was charged


@dataclass(frozen=True)
class ChargeResult:
    """What the gateway says of a charge (a Stripe PaymentIntent). ``reference`` is the gateway's id of
    the payment, which ``retrieve``, ``capture``, ``cancel`` and ``refund`` take."""

    succeeded: bool
    reference: str
    amount: Decimal
    currency: str
    decline_reason: str = ""
    status: str = ""
    action_url: str = ""
    decline_code: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(
                self, "status", ChargeStatus.SUCCEEDED if self.succeeded else ChargeStatus.DECLINED
            )

    @property
    def settled(self) -> bool:
        """The outcome is final for checkout: the money is ours (or held), or it never will be."""
        return self.status in (
            ChargeStatus.SUCCEEDED,
            ChargeStatus.AUTHORIZED,
            ChargeStatus.DECLINED,
            ChargeStatus.CANCELED,
        )


@dataclass(frozen=True)
class RefundResult:
    reference: str
    amount: Decimal
    status: str  # "succeeded", "pending" (settles later, by webhook) or "failed"
    failure_reason: str = ""


class PaymentGateway(Protocol):
    name: str

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
        """Charge once per idempotency key; a repeated key returns the first result. ``token`` is a card
        token or a PaymentMethod id; ``return_url`` is where 3-D Secure sends the customer back;
        ``capture=False`` only authorizes."""
        ...

    def retrieve(
        self, idempotency_key: str, *, reference: str = "", amount: Decimal | None = None, currency: str = ""
    ) -> ChargeResult | None:
        """The state of an earlier charge, by its ``reference`` when known, else by replaying its
        idempotency key; None if the gateway never charged with this key. Never charges."""
        ...

    def capture(self, reference: str, idempotency_key: str) -> ChargeResult:
        """Capture an authorized charge in full; repeating it changes nothing. Returns the charge's state:
        one that can no longer be captured (the authorization was voided or lapsed) comes back as it is."""
        ...

    def cancel(self, reference: str, idempotency_key: str) -> ChargeResult:
        """Cancel a charge that is not captured (waiting for 3-D Secure, processing or authorized);
        repeating it changes nothing. Returns the charge's state (it may have succeeded meanwhile)."""
        ...

    def refund(self, reference: str, idempotency_key: str, amount: Decimal | None = None) -> RefundResult:
        """Return ``amount`` (default: all) of a successful charge; repeating a key changes nothing."""
        ...

    def refund_status(self, reference: str) -> tuple[str, str]:
        """(succeeded, pending or failed; the failure reason) of a refund made earlier, as the gateway
        knows it now; GatewayError when it cannot tell."""
        ...

    def verify_webhook(self, payload: bytes, signature: str) -> dict:
        """The event of a payment-provider webhook, after verifying its signature header on the raw body;
        raises InvalidSignature."""
        ...


def get_gateway() -> PaymentGateway:
    return import_string(settings.PAYMENT_GATEWAY)()


class FakeGateway:
    """Behaves like a card processor in test mode, with Stripe's shapes, so that every path of a real
    payment runs under ``make run`` with no account.

    ``tok_visa`` and ``tok_mastercard`` succeed (or are authorized, with ``capture=False``);
    ``tok_chargeDeclined`` and ``tok_insufficient_funds`` are declined; ``tok_threeDSecureRequired``
    needs 3-D Secure: the customer is sent to a local page that authenticates or fails it and returns
    to ``return_url``; ``tok_processing`` stays processing and settles a few seconds later
    (``FAKE_GATEWAY_SETTLE_AFTER``) through a webhook signed like Stripe's, sent by a delayed job;
    ``tok_processing_error`` raises GatewayError and charges nothing; any other token is declined as
    invalid. Charges are kept in the database (``FakeGatewayCharge``).
    """

    name = "fake"
    TEST_TOKENS = {
        "tok_visa": "",
        "tok_mastercard": "",
        "tok_chargeDeclined": "Your card was declined.",
        "tok_insufficient_funds": "Your card has insufficient funds.",
    }
    THREE_D_SECURE_TOKEN = "tok_threeDSecureRequired"
    PROCESSING_TOKEN = "tok_processing"
    ERROR_TOKEN = "tok_processing_error"
    HINT_TOKENS = [*TEST_TOKENS, THREE_D_SECURE_TOKEN, PROCESSING_TOKEN, ERROR_TOKEN]

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
        from orders.models import FakeGatewayCharge

        # A first charge is one INSERT; a replay finds the key taken and answers with its charge.
        existing = None
        if token == self.ERROR_TOKEN:
            existing = FakeGatewayCharge.objects.filter(idempotency_key=idempotency_key).first()
            if existing is None:
                raise GatewayError("An error occurred while processing the card.")
        if existing is None:
            if token == self.THREE_D_SECURE_TOKEN:
                status, decline_reason = ChargeStatus.REQUIRES_ACTION, ""
            elif token == self.PROCESSING_TOKEN:
                status, decline_reason = ChargeStatus.PROCESSING, ""
            else:
                decline_reason = self.TEST_TOKENS.get(token, "The payment token is invalid.")
                succeeded = ChargeStatus.SUCCEEDED if capture else ChargeStatus.AUTHORIZED
                status = ChargeStatus.DECLINED if decline_reason else succeeded
            charge = FakeGatewayCharge(
                idempotency_key=idempotency_key,
                reference=f"pi_{secrets.token_hex(12)}",
                token=token,
                amount=amount,
                currency=currency,
                succeeded=status == ChargeStatus.SUCCEEDED,
                status=status,
                decline_reason=decline_reason,
                return_url=return_url,
            )
            try:
                # A savepoint only inside a caller's transaction: alone, a failed INSERT spoils nothing.
                with transaction.atomic() if connection.in_atomic_block else nullcontext():
                    charge.save(force_insert=True)
            except IntegrityError:
                # The key was charged before (a replay), or a concurrent request with it won the insert.
                existing = FakeGatewayCharge.objects.get(idempotency_key=idempotency_key)
            else:
                existing = charge
                if status == ChargeStatus.PROCESSING:
                    from jobs.api import enqueue

                    enqueue(
                        "fake_gateway_settle",
                        {"reference": existing.reference},
                        delay=timedelta(seconds=settings.FAKE_GATEWAY_SETTLE_AFTER),
                    )
        if existing.amount != amount or existing.currency != currency:
            raise GatewayError("Idempotency key reused with different parameters.")
        return self._result(existing)

    def retrieve(
        self, idempotency_key: str, *, reference: str = "", amount: Decimal | None = None, currency: str = ""
    ) -> ChargeResult | None:
        from orders.models import FakeGatewayCharge

        charges = FakeGatewayCharge.objects
        existing = (charges.filter(reference=reference) if reference else charges.none()).first()
        existing = existing or charges.filter(idempotency_key=idempotency_key).first()
        return None if existing is None else self._result(existing)

    def capture(self, reference: str, idempotency_key: str) -> ChargeResult:
        charge = self._charge(reference)
        if charge.status == ChargeStatus.AUTHORIZED:
            type(charge).objects.filter(pk=charge.pk, status=ChargeStatus.AUTHORIZED).update(
                status=ChargeStatus.SUCCEEDED, succeeded=True
            )
            charge.refresh_from_db()
        return self._result(charge)

    def cancel(self, reference: str, idempotency_key: str) -> ChargeResult:
        charge = self._charge(reference)
        waiting = [ChargeStatus.REQUIRES_ACTION, ChargeStatus.PROCESSING, ChargeStatus.AUTHORIZED]
        type(charge).objects.filter(pk=charge.pk, status__in=waiting).update(status=ChargeStatus.CANCELED)
        charge.refresh_from_db()
        return self._result(charge)

    def refund_status(self, reference: str) -> tuple[str, str]:
        from orders.models import FakeGatewayRefund

        done = FakeGatewayRefund.objects.filter(reference=reference).first()
        if done is None:
            raise GatewayError(f"No refund {reference}.")
        return done.status, done.failure_reason

    def refund(self, reference: str, idempotency_key: str, amount: Decimal | None = None) -> RefundResult:
        from orders.models import FakeGatewayCharge, FakeGatewayRefund

        with transaction.atomic():
            charge = FakeGatewayCharge.objects.select_for_update().filter(reference=reference).first()
            if charge is None or charge.status != ChargeStatus.SUCCEEDED:
                raise GatewayError(f"No successful charge {reference}.")
            done = FakeGatewayRefund.objects.filter(idempotency_key=idempotency_key).first()
            if done is None:
                remaining = charge.amount - charge.refunded_amount
                amount = remaining if amount is None else amount
                failure = "" if 0 < amount <= remaining else "The refund exceeds what is left of the charge."
                done = FakeGatewayRefund.objects.create(
                    idempotency_key=idempotency_key,
                    reference=f"re_{secrets.token_hex(12)}",
                    charge=charge,
                    amount=amount,
                    status="failed" if failure else "succeeded",
                    failure_reason=failure,
                )
                if not failure:
                    FakeGatewayCharge.objects.filter(pk=charge.pk).update(
                        refunded_amount=charge.refunded_amount + amount, refunded_at=timezone.now()
                    )
        return RefundResult(done.reference, done.amount, done.status, done.failure_reason)

    def verify_webhook(self, payload: bytes, signature: str) -> dict:
        from orders.webhooks import verify_signature

        if not verify_signature(signature or "", payload, fake_webhook_secret()):
            raise InvalidSignature("The webhook signature does not verify.")
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise InvalidSignature("The webhook body is not JSON.") from exc

    def complete_action(self, reference: str, *, succeed: bool) -> ChargeResult:
        """The customer passed (or failed) 3-D Secure on the fake gateway's page, or a processing
        payment settled: the charge succeeds or is declined, and a signed webhook is sent as Stripe
        would (through the same door a real one comes in)."""
        from orders.models import FakeGatewayCharge

        charge = self._charge(reference)
        waiting = [ChargeStatus.REQUIRES_ACTION, ChargeStatus.PROCESSING]
        if succeed:
            changes = {"status": ChargeStatus.SUCCEEDED, "succeeded": True}
        else:
            changes = {
                "status": ChargeStatus.DECLINED,
                "decline_reason": "The card could not be authenticated.",
            }
        changed = FakeGatewayCharge.objects.filter(pk=charge.pk, status__in=waiting).update(**changes)
        charge.refresh_from_db()
        if changed:
            from orders.payment_events import receive_event

            event_type = "payment_intent.succeeded" if succeed else "payment_intent.payment_failed"
            payload = json.dumps(fake_event(event_type, charge)).encode()
            receive_event(payload, sign_fake_event(payload), gateway=self)
        return self._result(charge)

    @staticmethod
    def _charge(reference: str):
        from orders.models import FakeGatewayCharge

        charge = FakeGatewayCharge.objects.filter(reference=reference).first()
        if charge is None:
            raise GatewayError(f"No charge {reference}.")
        return charge

    @staticmethod
    def _result(charge) -> ChargeResult:
        action_url = ""
        if charge.status == ChargeStatus.REQUIRES_ACTION:
            action_url = reverse("fake-gateway-authenticate", args=[charge.reference])
        return ChargeResult(
            succeeded=charge.status == ChargeStatus.SUCCEEDED,
            reference=charge.reference,
            amount=charge.amount,
            currency=charge.currency,
            decline_reason=charge.decline_reason,
            status=charge.status,
            action_url=action_url,
        )


def fake_webhook_secret() -> str:
    """The fake gateway signs its webhooks with this (STRIPE_WEBHOOK_SECRET if set, else derived)."""
    if settings.STRIPE_WEBHOOK_SECRET:
        return settings.STRIPE_WEBHOOK_SECRET
    return "whsec_fake_" + hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest()[:32]


def sign_fake_event(payload: bytes) -> str:
    from orders.webhooks import sign

    return sign(payload, fake_webhook_secret())


def fake_event(event_type: str, charge) -> dict:
    """A Stripe-shaped event about a fake charge (a PaymentIntent)."""
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": charge.reference,
                "object": "payment_intent",
                "status": charge.status
                if charge.status != ChargeStatus.DECLINED
                else "requires_payment_method",
                "amount": minor_units(charge.amount, charge.currency),
                "currency": charge.currency.lower(),
                "metadata": {"order_number": charge.idempotency_key},
                "last_payment_error": {"message": charge.decline_reason} if charge.decline_reason else None,
            }
        },
    }


# Currencies whose amounts Stripe counts in units other than hundredths
# (https://docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())


def _exponent(currency: str) -> int:
    currency = currency.upper()
    return 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2


def minor_units(amount: Decimal, currency: str) -> int:
    """An amount in the currency's smallest unit, as Stripe counts it (cents; yen are yen)."""
    minor = Decimal(amount).scaleb(_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} {currency} has more decimals than the currency")
    return int(minor)


def from_minor_units(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-_exponent(currency))


def __getattr__(name: str):
    # ``orders.gateways.StripeGateway`` without importing the Stripe SDK (0.2 s) into every
    # process that never uses it.
    if name == "StripeGateway":
        from orders.stripe_gateway import StripeGateway

        return StripeGateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
