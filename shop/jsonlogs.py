"""The JSON formatter of ``LOG_FORMAT=json`` (see shop.logging).

Written on the standard library rather than a JSON-logging package: a worker writes a line per job,
and building the object directly costs a third of what a general formatter spends (a no-op drain at
INFO feels it: see bench/README.md, "Tracing and JSON logs").
"""

import json
import logging
from datetime import UTC, datetime

from shop.privacy import scrub

# Attributes every LogRecord has: the rest of its __dict__ is what the call passed in ``extra`` or the
# context filter put there, and goes into the object as fields.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


_encode = json.JSONEncoder(default=str).encode  # built once: json.dumps with an option builds one a call


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, logger, message, the context and ``extra`` fields, the
    traceback as the one field ``exc_info`` (and ``stack_info``), and time (UTC, ISO 8601, ms).
    Email addresses and payment tokens are filtered out of the message and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {"level": record.levelname, "logger": record.name, "message": scrub(record.getMessage())}
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                fields[key] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc_info"] = scrub(record.exc_text)
        if record.stack_info:
            fields["stack_info"] = scrub(self.formatStack(record.stack_info))
        fields["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        return _encode(fields)
