"""Log context and JSON logs.

The context in force (request id, order number, job id, type, attempt, worker id) lives in a
``contextvars`` variable: the request middleware and the job_started receiver bind it, services add the
order number, and every log line written meanwhile carries it without the code passing it along.
``LOG_FORMAT=json`` writes one JSON object per line (shop.jsonlogs), the traceback as one field.
"""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from shop.privacy import scrub

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("shop_log_context", default=_EMPTY)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the context of the current request or job (and what it calls); the order
    number also labels the current span, when tracing is on."""
    _context.set(MappingProxyType({**_context.get(), **fields}))
    if "order_number" in fields:
        from shop import tracing

        if tracing.enabled():
            tracing.annotate("shop.order_number", str(fields["order_number"]))


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """``fields`` in the context for the ``with`` block only."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def current() -> Mapping[str, Any]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record (a field the call passed in ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with email addresses and payment tokens filtered out."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def __getattr__(name: str):
    # Imported only when LOG_FORMAT=json asks for the formatter.
    if name == "JsonFormatter":
        from shop.jsonlogs import JsonFormatter

        return JsonFormatter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def logging_config(log_format: str, level: str) -> dict:
    """The LOGGING setting for ``LOG_FORMAT`` (text or json)."""
    if log_format not in ("text", "json"):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {log_format!r}.")
    formatters = {
        "text": {
            "()": "shop.logging.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "shop.logging.JsonFormatter"},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shop.logging.ContextFilter"}},
        "formatters": {log_format: formatters[log_format]},  # only the one in use is built (imported)
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["context"]}
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "WARNING"}},
    }


def bind_job(sender, job, **kwargs) -> None:
    """job_started receiver: the job's fields join the context of its run (see jobs.signals)."""
    # What bind() does, without its keyword arguments and order number check: once per job run.
    _context.set(
        MappingProxyType(
            {
                **_context.get(),
                "job_id": job.id,
                "job_type": job.type,
                "attempt": job.attempts,
                "queue": job.queue,
                "worker_id": job.locked_by,
            }
        )
    )
