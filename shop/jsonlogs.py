"""The JSON formatter of ``LOG_FORMAT=json`` (see shop.logging): python-json-logger's, with the field
names a log pipeline expects and customer data filtered out.

A worker logs a job's success at DEBUG, so a drain at INFO writes a line per worker start and stop, not
per job: the formatter's cost per line (some 25 us) is paid by the lines that matter.
"""

import logging
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from shop.privacy import scrub


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: level, logger, message, the context and ``extra`` fields, the
    traceback as the one field ``exc_info`` (and ``stack_info``), and time (UTC, ISO 8601, ms).
    Email addresses and payment tokens are filtered out of the message and the traceback."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("json_default", str)
        super().__init__("{levelname}{name}{message}", *args, style="{", **kwargs)

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        for key in ("message", "exc_info", "stack_info"):
            if isinstance(log_data.get(key), str):
                log_data[key] = scrub(log_data[key])
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
