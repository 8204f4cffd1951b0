"""One JSON error envelope for every status; tracebacks go to the log, never to the client."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, has_request_context, jsonify
from prometheus_client import Counter
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .contract import error_code, error_envelope, error_message, new_request_id
from .extensions import db

log = logging.getLogger(__name__)
# In prometheus_client's default registry, which the host serves at /metrics on each replica.
DB_UNAVAILABLE = Counter(
    "flaskstack_db_unavailable",
    "Requests answered 503 because the pool had no free connection for DB_POOL_TIMEOUT seconds "
    "(reason=pool_timeout) or the database could not be reached (reason=connection).",
    ["reason"],
)


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


def is_database_unavailable(error: BaseException) -> bool:
    """Tell whether a SQLAlchemy error means the database cannot be reached or is overloaded."""
    if isinstance(error, sa_exc.TimeoutError):  # pool exhausted for pool_timeout seconds
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return False


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


def handle_database_error(error: Exception) -> Response:
    """Answer 503 when the database is down or saturated, 500 (logged) for anything else."""
    _rollback_quietly()
    if is_database_unavailable(error):
        DB_UNAVAILABLE.labels(
            "pool_timeout" if isinstance(error, sa_exc.TimeoutError) else "connection"
        ).inc()
        log.warning("database unavailable: %s", type(error).__name__, exc_info=error)
        return error_response(
            503, "The database is unavailable; retry later.", "database_unavailable"
        )
    log.error("database error", exc_info=error)
    return error_response(500, error_message(500))


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; unexpected exceptions reach Flask's logged 500 path first."""
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(sa_exc.SQLAlchemyError, handle_database_error)
    # Teardowns run in reverse order, so this runs before Flask-SQLAlchemy's own removal.
    app.teardown_appcontext(_remove_session_quietly)


def _remove_session_quietly(_error: BaseException | None) -> None:
    """End the request's session; a connection the database closed meanwhile is no 500."""
    try:
        db.session.remove()
    except sa_exc.SQLAlchemyError:
        # The response is already built: losing the connection now must not replace it.
        log.warning("closing the session failed: database connection lost", exc_info=True)
        try:
            # Discard the session's connection rather than return it to the pool: it is broken,
            # or at least still inside the request's transaction.
            db.session.registry().invalidate()
        except sa_exc.SQLAlchemyError:
            log.debug("invalidating the session failed", exc_info=True)
        db.session.registry.clear()


def _rollback_quietly() -> None:
    """Roll back the request's session, ignoring a dead connection."""
    try:
        db.session.rollback()
    except Exception:
        log.debug("rollback after database error failed", exc_info=True)
