"""A payment gateway that fails with an unexpected error: an unhandled web error for the reports."""

from decimal import Decimal


class ExplodingGateway:
    def charge(self, amount: Decimal, currency: str, token: str, idempotency_key: str, **kwargs):
        raise RuntimeError(f"gateway bug while charging {token} for {idempotency_key}")

    def retrieve(self, idempotency_key: str):
        return None
