"""API clients that place orders the way a careful integration does: each order has its own
Idempotency-Key, and connection errors, 5xx and 409 are retried with the same key until the answer is
final (201 or 402). Used by the suites that break the database or the network under real requests."""

import collections
import http.client
import json
import threading
import time
import urllib.error
import urllib.request

PRODUCTS = 3  # SKUs RST-0 .. RST-2; the tests create them


def order_body(i: int) -> dict:
    """Order ``i``: one line of RST-(i % 3); every eighth card is declined (402)."""
    return {
        "email": f"customer{i}@example.com",
        "name": f"Customer {i}",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "lines": [{"sku": f"RST-{i % PRODUCTS}", "quantity": 1 + i % 2}],
        "payment_token": "tok_chargeDeclined" if i % 8 == 0 else "tok_visa",
    }


class Traffic:
    """API clients that keep their requests going, and count how many are in flight.

    Order ``i`` is sent with the key ``f"{key_prefix}-{i}"``; its client gives up ``deadline`` seconds
    after its first attempt (the last answer is then recorded, and fails the test that reads it)."""

    def __init__(self, base_url: str, *, key_prefix: str, deadline: float):
        self.base_url = base_url
        self.key_prefix = key_prefix
        self.deadline = deadline
        self.lock = threading.Lock()
        self.in_flight = 0
        self.answers: dict[int, tuple[int, dict]] = {}
        self.retried = collections.Counter()  # why a request was retried: 'connection', 500, 409, ...

    def key(self, i: int) -> str:
        return f"{self.key_prefix}-{i}"

    def post(self, i: int) -> tuple[int | None, dict]:
        request = urllib.request.Request(
            self.base_url + "/api/orders",
            data=json.dumps(order_body(i)).encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": self.key(i)},
            method="POST",
        )
        with self.lock:
            self.in_flight += 1
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, {**json.loads(body), "retry_after": exc.headers.get("Retry-After")}
            except ValueError:
                return exc.code, {"raw": body[:200].decode(errors="replace")}
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError) as exc:
            return None, {"connection_error": repr(exc)}
        finally:
            with self.lock:
                self.in_flight -= 1

    def place(self, i: int) -> None:
        deadline = time.monotonic() + self.deadline
        while True:
            status, body = self.post(i)
            if status in (201, 402) or time.monotonic() > deadline:
                self.answers[i] = (status, body)
                return
            self.retried["connection" if status is None else status] += 1
            if status not in (None, 409) and status < 500:
                self.answers[i] = (status, body)  # a client error: never retried, fails the test
                return
            time.sleep(min(float(body.get("retry_after") or 0.05), 0.5))

    def client(self, indices, *, until: threading.Event | None = None, pause: float = 0.0) -> None:
        """Place the orders ``indices`` one after the other, ``pause`` seconds apart, until ``until``
        is set (an order begun is always finished)."""
        for i in indices:
            if until is not None and until.is_set():
                return
            self.place(i)
            time.sleep(pause)

    def told(self) -> dict[str, str]:
        """The order number each key's client was told (201 and 402 alike), by key."""
        answers = self.answers.items()
        return {self.key(i): body.get("number") or body["order"]["number"] for i, (_, body) in answers}
