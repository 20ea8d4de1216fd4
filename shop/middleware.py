"""Request-wide guards that must run before anything reads the body, and the request's log context."""

import logging
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.log import log_response

log = logging.getLogger("shop")


class RequestSizeLimitMiddleware:
    """Refuse a body declared larger than ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` with 413, before any
    view, the CSRF check or the multipart parser reads it.

    Django's own limit leaves out file parts of multipart bodies (they are streamed to disk), and is
    checked only while parsing; no form of this shop takes a file, so the limit is on the whole body.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # Django reads no body without a valid length
        if limit is not None and length > limit:
            message = f"The body is larger than {limit} bytes."
            if request.path.startswith("/api/"):
                return JsonResponse({"error": "too_large", "message": message}, status=413)
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


class RequestIdMiddleware:
    """The request id: the client's ``X-Request-ID`` when it is a plain token of at most 200 characters,
    else a fresh one; bound to the log context for the request and echoed in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from shop.logging import bound

        given = request.headers.get("X-Request-ID", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        request.request_id = request_id
        with bound(request_id=request_id):
            response = self.get_response(request)
            if response.status_code >= 400:
                # Django logs "Not Found: ..." after the middleware returns, outside this context; log it
                # here instead, with the request id (the response is marked logged, so once).
                log_response(
                    "%s: %s", response.reason_phrase, request.path, response=response, request=request
                )
        response["X-Request-ID"] = request_id
        return response


class DatabaseUnavailableMiddleware:
    """A view that could not reach the database answers 503 with Retry-After, not a 500 page: the
    client may retry (an API client with the same Idempotency-Key resumes where the request got to).
    With DB_CONNECT_TIMEOUT and DB_TCP_USER_TIMEOUT this answer comes within seconds on a cut link."""

    RETRY_AFTER = "5"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        log.error("%s %s: database unavailable (%s); answered 503", request.method, request.path, exception)
        message = "The shop cannot reach its database right now; please retry in a few seconds."
        if request.path.startswith("/api/"):
            response = JsonResponse({"error": "unavailable", "message": message}, status=503)
        else:
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = self.RETRY_AFTER
        return response
