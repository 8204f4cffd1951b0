"""The stack's guarantees for any Flask-SQLAlchemy app, in one call.

    from flaskstack.extension import FlaskStack

    stack = FlaskStack()          # beside db = SQLAlchemy()

    def create_app():
        app = Flask(__name__)
        app.config.from_object(Config)
        stack.init_app(app, db)   # before db.init_app(app): it sizes the engine's pool
        db.init_app(app)

What the app then has, as the demo app does:
- a connection pool sized to the replica's threads (APP_THREADS), a checkout that gives up after
  DB_POOL_TIMEOUT seconds, a connect timeout and a liveness check (pre-ping) on every checkout,
  so a restarted Postgres costs failed requests only while it is down;
- a 503 with Retry-After, in the stack's error envelope, when the database cannot be reached or
  the pool stays empty, instead of a 500 and a traceback (an HTML page for a browser);
- a session that a lost connection cannot turn into a 500 after the response is built;
- `flaskstack_db_unavailable_total` on the replica's /metrics.

The request id in log lines, X-Request-ID and X-Served-By on every response, and the DB pool
gauges on /metrics come from the host for any app. Every DB_* setting is read from the app's
config first, then the environment; SQLALCHEMY_ENGINE_OPTIONS keys the app sets itself win.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from prometheus_client import Counter
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from .contract import current_request_id, error_envelope

log = logging.getLogger("flaskstack")
RETRY_AFTER_S = 2  # a restarted Postgres is back within seconds; the pool re-checks each checkout
# In prometheus_client's default registry, which the host serves at /metrics on each replica.
DB_UNAVAILABLE = Counter(
    "flaskstack_db_unavailable",
    "Requests answered 503 because the pool had no free connection for DB_POOL_TIMEOUT seconds "
    "(reason=pool_timeout) or the database could not be reached (reason=connection).",
    ["reason"],
)
# The pool settings and their defaults; DB_POOL_SIZE defaults to APP_THREADS, one connection
# per pool thread, so a request never waits for a connection another thread holds.
DB_DEFAULTS = {
    "DB_MAX_OVERFLOW": 2,
    "DB_POOL_TIMEOUT": 3,
    "DB_CONNECT_TIMEOUT": 3,
    "DB_STATEMENT_TIMEOUT_MS": 0,
}
DEFAULT_THREADS = 16  # the host's APP_THREADS default (settings.Settings.threads)


def db_settings(config: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> dict:
    """The DB_* settings: the app's config, else the environment, else the defaults."""

    def read(key: str, default: int) -> int:
        value = config.get(key)
        if value in (None, ""):
            value = environ.get(key) or default
        return int(value)

    threads = int(environ.get("APP_THREADS") or DEFAULT_THREADS)
    settings = {key: read(key, default) for key, default in DB_DEFAULTS.items()}
    settings["DB_POOL_SIZE"] = read("DB_POOL_SIZE", threads)
    return settings


def engine_options(uri: str, settings: Mapping[str, int], name: str = "flaskstack-app") -> dict:
    """Size the pool to the worker threads and fail fast, so a starved request becomes a 503."""
    url = make_url(uri)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return {}  # in-memory SQLite uses a single static connection, not a pool
    options: dict[str, Any] = {
        "pool_size": settings["DB_POOL_SIZE"],
        "max_overflow": settings["DB_MAX_OVERFLOW"],
        "pool_timeout": settings["DB_POOL_TIMEOUT"],
        "pool_pre_ping": True,
        "pool_recycle": 1800,
    }
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {
            "connect_timeout": settings["DB_CONNECT_TIMEOUT"],
            "application_name": name,
        }
        # 0 keeps the server's (or role's) statement_timeout and idle_in_transaction timeout.
        if timeout_ms := settings["DB_STATEMENT_TIMEOUT_MS"]:
            connect_args["options"] = (
                f"-c statement_timeout={timeout_ms} "
                f"-c idle_in_transaction_session_timeout={timeout_ms}"
            )
        options["connect_args"] = connect_args
    else:
        options["connect_args"] = {"timeout": settings["DB_CONNECT_TIMEOUT"]}
    return options


def postgres_driver(uri: str) -> str:
    """Name an installed driver in a Postgres URL that names none.

    `postgres://` (as hosting services write it) is no SQLAlchemy dialect, and a bare
    `postgresql://` means psycopg 3 since SQLAlchemy 2.1: with only psycopg2 installed, as in
    most Flask projects, both would fail at the first query.
    """
    url = make_url(uri)
    if url.drivername not in ("postgres", "postgresql"):
        return uri
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def is_database_unavailable(error: BaseException) -> bool:
    """Tell whether a SQLAlchemy error means the database cannot be reached or is overloaded."""
    if isinstance(error, sa_exc.TimeoutError):  # pool exhausted for pool_timeout seconds
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return False


def unavailable_response(request_id: str | None) -> Response:
    """The 503 for a database outage: the envelope, or a short page for a browser."""
    message = "The database is unavailable; retry later."
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    if (
        best == "text/html"
        and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]
    ):
        body = f"<!doctype html><title>503 Service Unavailable</title><p>{message}</p>\n"
        response = Response(body, 503, mimetype="text/html")
    else:
        envelope = error_envelope(503, request_id, message, "database_unavailable")
        response = Response(
            json.dumps(envelope),
            503,
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class FlaskStack:
    """Give a Flask-SQLAlchemy app the stack's pool sizing, 503 on outage and metrics."""

    def __init__(self, app: Flask | None = None, db: Any = None) -> None:
        if app is not None:
            self.init_app(app, db)

    def init_app(self, app: Flask, db: Any = None) -> None:
        """Configure `app` (and `db`, its SQLAlchemy, before `db.init_app(app)`)."""
        app.extensions["flaskstack"] = self
        if db is not None:
            if app in getattr(db, "_app_engines", {}):
                raise RuntimeError(
                    "call FlaskStack().init_app(app, db) before db.init_app(app): "
                    "the engine's pool is sized when db.init_app creates it"
                )
            uri = app.config.get("SQLALCHEMY_DATABASE_URI")
            if uri:
                uri = app.config["SQLALCHEMY_DATABASE_URI"] = postgres_driver(uri)
                ours = engine_options(uri, db_settings(app.config))
                theirs = app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
                app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {**ours, **theirs}
            quiet_session_removal(db)

        def on_database_error(error: sa_exc.SQLAlchemyError) -> Response:
            if not is_database_unavailable(error):
                raise error  # the app's own 500 handling, as without this extension
            if db is not None:
                rollback_quietly(db)
            reason = "pool_timeout" if isinstance(error, sa_exc.TimeoutError) else "connection"
            DB_UNAVAILABLE.labels(reason).inc()
            log.warning("database unavailable: %s", type(error).__name__, exc_info=error)
            return unavailable_response(current_request_id.get())

        app.register_error_handler(sa_exc.SQLAlchemyError, on_database_error)


def rollback_quietly(db: Any) -> None:
    """Roll back the request's session, ignoring a dead connection."""
    try:
        db.session.rollback()
    except Exception:
        log.debug("rollback after database error failed", exc_info=True)


def quiet_session_removal(db: Any) -> None:
    """Make the session's end-of-request removal survive a connection the database closed.

    Flask-SQLAlchemy's teardown calls `db.session.remove()`; the response is built by then, and
    a lost connection must not replace it with a 500.
    """
    remove = db.session.remove
    if getattr(remove, "flaskstack", False):
        return

    def remove_quietly() -> None:
        try:
            remove()
        except sa_exc.SQLAlchemyError:
            log.warning("closing the session failed: database connection lost", exc_info=True)
            try:
                # Discard the session's connection rather than return it to the pool: it is
                # broken, or at least still inside the request's transaction.
                db.session.registry().invalidate()
            except sa_exc.SQLAlchemyError:
                log.debug("invalidating the session failed", exc_info=True)
            db.session.registry.clear()

    remove_quietly.flaskstack = True  # type: ignore[attr-defined]
    db.session.remove = remove_quietly
