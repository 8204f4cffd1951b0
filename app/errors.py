"""One JSON error envelope for every status; tracebacks go to the log, never to the client."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, has_request_context, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from flaskstack.contract import error_code, error_envelope, error_message, new_request_id

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a view raises on purpose; rendered as the JSON envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or error_code(status)
        self.fields = fields


def request_id() -> str | None:
    """Return the current request's id, creating one if middleware has not run yet."""
    if not has_request_context():
        return None
    if "request_id" not in g:
        g.request_id = new_request_id()
    return str(g.request_id)


def error_response(
    status: int, message: str, code: str | None = None, fields: dict[str, str] | None = None
) -> Response:
    """Build the error envelope response."""
    response = jsonify(error_envelope(status, request_id(), message, code, fields))
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def handle_api_error(error: APIError) -> Response:
    """Render an APIError."""
    return error_response(error.status, error.message, error.code, error.fields)


def handle_http_exception(error: HTTPException) -> Response:
    """Render werkzeug's own errors (404, 405, 413, ...) in the envelope, without their text."""
    status = error.code or 500
    response = error_response(status, error_message(status))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; unexpected exceptions reach Flask's logged 500 path first.

    A database outage is the stack's extension's (flaskstack.extension): a 503 with Retry-After.
    """
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
