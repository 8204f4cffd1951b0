"""What every process of the stack agrees on: request ids, the error envelope, the log line and
the event channel.

The Flask app and the Tornado host (deploy/tornado/) both import this module, and nginx's copies
(its request-id map and its JSON error page) are checked against it by
tests/unit/test_consistency.py. Standard library only, so the host can use it for any app.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TextIO
from urllib.parse import urlsplit

# A client's X-Request-ID is honoured when it matches this (safe to log and to echo back);
# otherwise a new id is generated. nginx.conf's `map $http_x_request_id` uses the same pattern.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")

# The Postgres channel events are NOTIFYed on and the host LISTENs to.
EVENT_CHANNEL = "app_events"

# The `code` of the error envelope by HTTP status; other statuses use their phrase in snake_case.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    494: "header_too_large",  # nginx's own status for a request header over its buffers
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
    505: "http_version_not_supported",
}

# The id of the request this thread is serving, for log lines written while it runs: the app
# sets it when a request starts and clears it when the request ends.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


def sane_request_id(value: str | None) -> str | None:
    """Return value if it is a request id safe to log and echo, else None."""
    return value if value and REQUEST_ID_PATTERN.fullmatch(value) else None


def new_request_id() -> str:
    """Return a fresh request id (32 hex digits, like nginx's $request_id)."""
    return uuid.uuid4().hex


def error_code(status: int) -> str:
    """Return the envelope's code for an HTTP status."""
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_message(status: int) -> str:
    """Return a fixed, client-safe message for an HTTP status."""
    try:
        return f"{HTTPStatus(status).phrase}."
    except ValueError:
        return "Error."


def error_envelope(
    status: int,
    request_id: str | None,
    message: str | None = None,
    code: str | None = None,
    fields: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return the API's error body: {"error": {status, code, message[, fields]}, "request_id"}."""
    error: dict[str, Any] = {
        "status": status,
        "code": code or error_code(status),
        "message": message or error_message(status),
    }
    if fields:
        error["fields"] = fields
    return {"error": error, "request_id": request_id}


def listen_dsn(database_url: str | None) -> str | None:
    """The libpq address of a SQLAlchemy Postgres URL (for LISTEN), or None for other databases."""
    if not database_url:
        return None
    scheme = urlsplit(database_url).scheme
    if scheme.split("+")[0] not in ("postgresql", "postgres"):
        return None
    return "postgresql" + database_url[len(scheme) :]


# --- the log line ------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Give every record a request_id: its own (from `extra=`), else the current request's."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set record.request_id when missing and keep the record."""
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, any `extra=` fields,
    and the traceback as `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one JSON line."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_handler(fmt: str, stream: TextIO = sys.stderr) -> logging.Handler:
    """A handler writing the stack's log line: `json` (one object per line) or `text`."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    fmt = fmt.lower()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"LOG_FORMAT must be json or text, got {fmt!r}")
    return handler
