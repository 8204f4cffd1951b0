"""Service index, liveness and readiness."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .errors import error_response
from .extensions import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/")
def index() -> Response:
    """Name the service and link to its main resources."""
    return jsonify(
        name="flaskstack",
        version=current_app.config["VERSION"],
        links={
            "openapi": "/openapi.json",
            "health": "/healthz",
            "ready": "/readyz",
            "posts": "/api/posts",
            "echo": "/api/echo",
            "bench": "/bench/json",
            "websocket": "/ws",
        },
    )


@bp.get("/healthz")
def healthz() -> Response:
    """Report that the process is alive (no database access)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Report ready only when a database round trip succeeds."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        log.warning("readiness check failed: %s", type(error).__name__)
        db.session.rollback()
        return error_response(503, "The database is unavailable.", "database_unavailable")
    return jsonify(status="ok", database="ok")
