"""The JSON formatter of ``LOG_FORMAT=json`` (see shop.logging)."""

import logging
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from shop.privacy import scrub


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context, and the
    traceback as the one field ``exc_info``. Email addresses and payment tokens are filtered out."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("{levelname}{name}{message}", *args, style="{", **kwargs)

    def add_fields(self, log_record: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        for key in ("message", "exc_info", "stack_info"):
            if isinstance(log_record.get(key), str):
                log_record[key] = scrub(log_record[key])
