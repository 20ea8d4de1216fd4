"""Hypothesis strategies for bodies a client may send: anything at all, and valid ones broken in one place."""

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from orders.services import MAX_LINES, MAX_QUANTITY

# Bounded so that the whole suite stays fast; no example database written into the repository.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
not_a_string = json_values.filter(lambda v: not isinstance(v, str))
not_an_int = json_values.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))


def valid_body(sku: str = "A") -> dict:
    return {
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "shipping_address": {
            "line1": "1 Analytical Street",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
        "lines": [{"sku": sku, "quantity": 1}],
        "payment_token": "tok_visa",
    }


@st.composite
def broken_bodies(draw) -> dict:
    """A valid body with exactly one thing wrong that the API must refuse."""
    body = valid_body()
    address, line = body["shipping_address"], body["lines"][0]
    how = draw(st.sampled_from(["type", "missing", "extra", "value"]))
    if how == "type":
        target, key = draw(
            st.sampled_from(
                [
                    (body, "email"),
                    (body, "name"),
                    (body, "payment_token"),
                    (body, "shipping_address"),
                    (body, "lines"),
                    (address, "line1"),
                    (address, "country"),
                    (line, "sku"),
                ]
            )
        )
        target[key] = draw(not_a_string if key not in ("shipping_address", "lines") else json_scalars)
    elif how == "missing":
        target, key = draw(
            st.sampled_from(
                [(body, k) for k in body] + [(address, k) for k in address] + [(line, k) for k in line]
            )
        )
        del target[key]
    elif how == "extra":
        target = draw(st.sampled_from([body, address, line]))
        key = draw(text.filter(lambda k: k not in target))
        target[key] = draw(json_values)
    else:
        field = draw(
            st.sampled_from(["email", "country", "quantity", "quantity_type", "sku", "lines", "blank"])
        )
        if field == "email":
            body["email"] = draw(text.filter(lambda s: "@" not in s))
        elif field == "country":
            body["shipping_address"]["country"] = draw(
                text.filter(
                    lambda s: not (len(s.strip()) == 2 and s.strip().isascii() and s.strip().isalpha())
                )
            )
        elif field == "quantity":
            line["quantity"] = draw(st.integers(max_value=0) | st.integers(min_value=MAX_QUANTITY + 1))
        elif field == "quantity_type":
            line["quantity"] = draw(not_an_int)
        elif field == "sku":
            # Not a SKU of the tests' catalog (A and B), or the order would be placed.
            line["sku"] = draw(text.filter(lambda s: s.strip() not in ("A", "B")))
        elif field == "lines":
            body["lines"] = draw(
                st.just([])
                | st.just([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}])
                | st.just([{"sku": f"S{i}", "quantity": 1} for i in range(MAX_LINES + 1)])
            )
        else:
            target, key = draw(st.sampled_from([(body, "name"), (address, "city"), (body, "payment_token")]))
            target[key] = draw(st.sampled_from(["", "   ", "x" * 1000]))
    return body


def encoded(value) -> bytes:
    return json.dumps(value).encode()
