"""Outgoing HTTP for the pipeline: JSON POSTs with a timeout, errors sorted into retry or not."""

import urllib.error
import urllib.request

from django.conf import settings

USER_AGENT = "shop-pipeline/1"
# Client errors that may succeed later: the receiver asked us to slow down or timed out waiting.
RETRYABLE_4XX = {408, 425, 429}


class TransientHTTPError(Exception):
    """A timeout, connection error or 5xx: trying again later may succeed."""


class PermanentHTTPError(Exception):
    """The receiver refused the request (4xx): sending it again will not help."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def post_json(url: str, body: bytes, *, headers: dict[str, str] | None = None) -> int:
    """POST ``body`` (JSON); returns the 2xx status, or raises TransientHTTPError/PermanentHTTPError.

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
        if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
            raise PermanentHTTPError(exc.code, message) from None
        raise TransientHTTPError(message) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientHTTPError(f"POST {url}: {reason}") from None
