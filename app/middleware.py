"""Per-request middleware: CORS allow-list, request id, timing, served-by, security headers.

The API is stateless (a JWT in the Authorization header), so no cookie session is opened or
saved: Flask's default would build a signing serializer for every request and check the
session again on every response, for a cookie this API never sets.
"""

from __future__ import annotations

import socket
import time

from flask import Flask, Response, g, request
from flask.sessions import NullSession, SessionInterface

from flaskstack.contract import current_request_id, new_request_id, sane_request_id

from .extensions import cors

# Added to every response unless the view set the header itself.
DEFAULT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


class NoSession(NullSession):
    """flask.session for an API that keeps none: reads see an empty dict, writes fail loudly."""

    def _fail(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "This API keeps no cookie session: keep state in the database or in the JWT."
        )

    __setitem__ = __delitem__ = clear = pop = popitem = update = setdefault = _fail  # type: ignore[assignment]


class NoSessionInterface(SessionInterface):
    """Open no cookie session and never save one."""

    null_session_class = NoSession

    def open_session(self, app: Flask, request: object) -> NoSession:  # type: ignore[override]
        return NoSession()

    def save_session(self, app: Flask, session: object, response: Response) -> None:  # type: ignore[override]
        return None


def init_app(app: Flask) -> None:
    """Register CORS (allow-list only) and the before/after request hooks."""
    served_by = socket.gethostname()
    app.session_interface = NoSessionInterface()
    if app.config["CORS_ORIGINS"]:
        cors.init_app(
            app,
            origins=app.config["CORS_ORIGINS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Served-By", "X-Response-Time", "Location"],
            methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            supports_credentials=False,
            max_age=600,
        )

    @app.before_request
    def start_request() -> None:
        """Honour a sane X-Request-ID, else generate one, and start the clock."""
        g.started = time.perf_counter()
        g.request_id = sane_request_id(request.headers.get("X-Request-ID")) or new_request_id()
        current_request_id.set(g.request_id)  # for log lines written while the request runs

    @app.after_request
    def finish_request(response: Response) -> Response:
        """Add the tracing and security headers to every response."""
        if "request_id" not in g:  # a response made before start_request ran
            g.request_id = new_request_id()
        response.headers["X-Request-ID"] = g.request_id
        response.headers["X-Served-By"] = served_by
        if "started" in g:
            elapsed_ms = (time.perf_counter() - g.started) * 1000
            response.headers["X-Response-Time"] = f"{elapsed_ms:.2f}ms"
        headers = response.headers
        present = {name.lower() for name, _ in headers}  # one pass, not one per default
        for name, value in DEFAULT_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        return response

    @app.teardown_request
    def end_request(_error: BaseException | None) -> None:
        """Forget the request id, so a pool thread's next lines carry no stale one."""
        current_request_id.set(None)
