"""Outgoing HTTP for the pipeline: JSON POSTs with a timeout, errors sorted into retry or not."""

import email.utils
import time
import urllib.error
import urllib.request

from django.conf import settings

USER_AGENT = "shop-pipeline/1"
# Client errors that may succeed later: the receiver asked us to slow down or timed out waiting.
RETRYABLE_4XX = {408, 425, 429}
# Answers whose Retry-After says when to come back: the job waits that long without using an attempt.
SLOW_DOWN = {429, 503}
# The longest wait a Retry-After gets: a receiver asking for a day is asked again within the hour.
RETRY_AFTER_CAP = 3600.0


class TransientHTTPError(Exception):
    """A timeout, connection error or 5xx: trying again later may succeed."""


class RetryLater(TransientHTTPError):
    """The receiver asked us to come back later (429 or 503 with Retry-After): not a failure."""

    def __init__(self, seconds: float, message: str):
        self.seconds = seconds
        super().__init__(message)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), at least 1 and at
    most RETRY_AFTER_CAP; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 1.0), RETRY_AFTER_CAP)


class PermanentHTTPError(Exception):
    """The receiver refused the request (4xx): sending it again will not help."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def post_json(url: str, body: bytes, *, headers: dict[str, str] | None = None) -> int:
    """POST ``body`` (JSON); returns the 2xx status, or raises TransientHTTPError/PermanentHTTPError, or
    RetryLater (a TransientHTTPError) for a 429 or 503 that says when to come back.

    Never waits longer than ``settings.HTTP_TIMEOUT`` for a connection or a read.
    """
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", USER_AGENT)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=settings.HTTP_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        message = f"POST {url}: HTTP {exc.code} {exc.reason}"
        wait = retry_after(exc.headers.get("Retry-After")) if exc.code in SLOW_DOWN and exc.headers else None
        if wait is not None:
            raise RetryLater(wait, f"{message}, Retry-After {wait:g}s") from None
        if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
            raise PermanentHTTPError(exc.code, message) from None
        raise TransientHTTPError(message) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientHTTPError(f"POST {url}: {reason}") from None
