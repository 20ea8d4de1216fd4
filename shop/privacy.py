"""What must never leave the process in a log line or an error report: customers' email addresses and
payment tokens (card tokens, PaymentMethod ids, card numbers)."""

import re
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# Stripe-style tokens (tok_, pm_, card_, src_) and anything shaped like a card number.
PAYMENT_TOKEN = re.compile(r"\b(?:tok|pm|card|src)_[A-Za-z0-9_]+|\b(?:\d[ -]?){12,18}\d\b")
# Keys whose values are customer data wherever they appear (request bodies, job payloads, locals).
SENSITIVE_KEYS = {"email", "payment_token", "token", "card", "card_number", "customer_email", "to"}

FILTERED = "[Filtered]"


def scrub(text: str) -> str:
    """``text`` with every email address and payment token replaced by [Filtered]."""
    if "@" in text:  # the email pattern is the costlier scan, and every address has one
        text = EMAIL.sub(FILTERED, text)
    return PAYMENT_TOKEN.sub(FILTERED, text)


def scrub_data(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON-like value with sensitive keys' values and any email or token in a string
    replaced."""
    if depth > 20:
        return FILTERED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            k: FILTERED if str(k).lower() in SENSITIVE_KEYS else scrub_data(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_data(v, depth + 1) for v in value]
    return value
