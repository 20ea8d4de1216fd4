"""Payment gateways behind one interface, chosen by ``settings.PAYMENT_GATEWAY`` (a dotted path).

A gateway is called outside any database transaction. Every charge carries an idempotency key (the
order number), so a retried request never charges twice and ``retrieve`` can later tell what became of
a charge whose answer was lost.
"""

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
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
        """Capture an authorized charge in full; repeating it changes nothing."""
        ...

    def cancel(self, reference: str, idempotency_key: str) -> ChargeResult:
        """Cancel a charge that is not captured (waiting for 3-D Secure, processing or authorized);
        repeating it changes nothing. Returns the charge's state (it may have succeeded meanwhile)."""
        ...

    def refund(self, reference: str, idempotency_key: str, amount: Decimal | None = None) -> RefundResult:
        """Return ``amount`` (default: all) of a successful charge; repeating a key changes nothing."""
        ...

    def verify_webhook(self, payload: bytes, signature: str) -> dict:
        """The event of a payment-provider webhook, after verifying its signature header on the raw body;
        raises InvalidSignature."""
        ...


def get_gateway() -> PaymentGateway:
    return import_string(settings.PAYMENT_GATEWAY)()


class FakeGateway:
    """Behaves like a card processor in test mode.

    ``tok_visa`` and ``tok_mastercard`` succeed; ``tok_chargeDeclined`` and ``tok_insufficient_funds``
    are declined; ``tok_processing_error`` raises GatewayError and charges nothing; any other token is
    declined as invalid. Charges are kept in the database (``FakeGatewayCharge``).
    """

    name = "fake"
    TEST_TOKENS = {
        "tok_visa": "",
        "tok_mastercard": "",
        "tok_chargeDeclined": "Your card was declined.",
        "tok_insufficient_funds": "Your card has insufficient funds.",
    }
    ERROR_TOKEN = "tok_processing_error"

    def charge(self, amount: Decimal, currency: str, token: str, idempotency_key: str) -> ChargeResult:
        from orders.models import FakeGatewayCharge

        existing = FakeGatewayCharge.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:
            if token == self.ERROR_TOKEN:
                raise GatewayError("An error occurred while processing the card.")
            decline_reason = self.TEST_TOKENS.get(token, "The payment token is invalid.")
            try:
                with transaction.atomic():
                    existing = FakeGatewayCharge.objects.create(
                        idempotency_key=idempotency_key,
                        reference=f"ch_{secrets.token_hex(12)}",
                        token=token,
                        amount=amount,
                        currency=currency,
                        succeeded=not decline_reason,
                        decline_reason=decline_reason,
                    )
            except IntegrityError:
                # A concurrent request with the same key won the insert: return its result.
                existing = FakeGatewayCharge.objects.get(idempotency_key=idempotency_key)
        if existing.amount != amount or existing.currency != currency:
            raise GatewayError("Idempotency key reused with different parameters.")
        return self._result(existing)

    def retrieve(self, idempotency_key: str) -> ChargeResult | None:
        from orders.models import FakeGatewayCharge

        existing = FakeGatewayCharge.objects.filter(idempotency_key=idempotency_key).first()
        return None if existing is None else self._result(existing)

    def refund(self, reference: str, idempotency_key: str) -> None:
        from orders.models import FakeGatewayCharge

        charge = FakeGatewayCharge.objects.filter(reference=reference, succeeded=True).first()
        if charge is None:
            raise GatewayError(f"No successful charge {reference}.")
        FakeGatewayCharge.objects.filter(pk=charge.pk, refunded_at=None).update(refunded_at=timezone.now())

    @staticmethod
    def _result(charge) -> ChargeResult:
        return ChargeResult(
            succeeded=charge.succeeded,
            reference=charge.reference,
            amount=charge.amount,
            currency=charge.currency,
            decline_reason=charge.decline_reason,
        )


def __getattr__(name: str):
    # ``orders.gateways.StripeGateway`` without importing the Stripe SDK (0.2 s) into every
    # process that never uses it.
    if name == "StripeGateway":
        from orders.stripe_gateway import StripeGateway

        return StripeGateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
