"""Per-request middleware: CORS allow-list, request id, timing, served-by, security headers."""

from __future__ import annotations

import re
import socket
import time
import uuid

from flask import Flask, Response, g, request

from .extensions import cors

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def init_app(app: Flask) -> None:
    """Register CORS (allow-list only) and the before/after request hooks."""
    served_by = socket.gethostname()
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
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex

    @app.after_request
    def finish_request(response: Response) -> Response:
        """Add the tracing and security headers to every response."""
        if "request_id" not in g:  # a response made before start_request ran
            g.request_id = uuid.uuid4().hex
        response.headers["X-Request-ID"] = g.request_id
        response.headers["X-Served-By"] = served_by
        if "started" in g:
            elapsed_ms = (time.perf_counter() - g.started) * 1000
            response.headers["X-Response-Time"] = f"{elapsed_ms:.2f}ms"
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response
