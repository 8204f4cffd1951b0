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
  DB_POOL_TIMEOUT seconds, a connect timeout and a liveness check of every connection that sat
  idle in the pool, so a restarted Postgres costs failed requests only while it is down;
- on Postgres, reads without a transaction until the request's first write (DB_AUTOCOMMIT_READS):
  a one-query read is one round trip instead of four (see `StackPool`);
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
import re
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from prometheus_client import Counter
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import QueuePool

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
    "DB_AUTOCOMMIT_READS": 1,
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


# Round trips. With SQLAlchemy's pre-ping and psycopg2's implicit BEGIN, a request that reads one
# row costs four: the ping, BEGIN, the query and the ROLLBACK when the session ends. Measured
# here (wrk through the stack on /bench/db, 32 connections, replica and Postgres CPU per request
# from the containers' cgroups, runs alternating between two stacks): dropping the ping alone,
# replicas 1,175 -> 982 us and Postgres 318 -> 242 us (3 pairs); this pool (idle check and reads
# without a transaction), replicas 1,008 -> 886 us and Postgres 255 -> 149 us (7 pairs).
#
# The ping is only worth its round trip for a connection that sat idle: one that served a
# request less than PING_AFTER_IDLE_S ago was alive then, and a database that went away since
# fails that request (a 503) and invalidates the whole pool, as the ping would have. Under load
# every connection is reused within milliseconds, so the ping is gone; a quiet replica still
# checks each connection before use. An app that wants a ping on every checkout sets
# `pool_pre_ping` in its SQLALCHEMY_ENGINE_OPTIONS.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "flaskstack_idle_since"  # in a pooled connection's info: when it was checked in
_READS_AUTOCOMMIT = "flaskstack_reads_autocommit"  # set by AutocommitReadsPool at checkout
# Statements that may run outside a transaction: a plain read. Anything else (a write, DDL, SET,
# SELECT INTO, a CTE that may modify, a row lock, a transaction-scoped function) starts the
# transaction.
READ_ONLY = re.compile(r"\s*(?:SELECT|SHOW|VALUES)\b", re.IGNORECASE)
NEEDS_TRANSACTION = re.compile(
    r"\bINTO\b"  # SELECT ... INTO makes a table
    r"|\bFOR\s+(?:UPDATE|NO\s+KEY\s+UPDATE|SHARE|KEY\s+SHARE)\b"
    r"|\b(?:pg_notify|pg_advisory_xact_\w+|pg_try_advisory_xact_\w+|set_config|txid_current|"
    r"pg_current_xact_id)\s*\(",
    re.IGNORECASE,
)


class StackPool(QueuePool):
    """SQLAlchemy's QueuePool, checking a connection before use only when it sat idle."""


class AutocommitReadsPool(StackPool):
    """StackPool whose connections read without a transaction until the first write.

    A checked-out connection is in the driver's autocommit mode; before the first statement that
    is not a plain read, `begin_before_writes` turns autocommit off, so the driver sends BEGIN
    and that statement and everything after it up to commit or rollback is one transaction, as
    without this pool. A read-only request then sends no BEGIN and no ROLLBACK.

    Under READ COMMITTED (Postgres's default, and the only level this pool is used with), every
    statement takes its own snapshot inside a transaction too, so a plain read sees the same
    rows either way; this is the transaction discipline Django runs by default, with writes
    still atomic. What differs: a function called from a SELECT that writes commits at once (the
    known transaction-scoped ones, pg_notify, the xact advisory locks and set_config, start the
    transaction instead). An app that relies on that, or on a snapshot held across reads, sets
    DB_AUTOCOMMIT_READS=0 or its own isolation_level.
    """


@event.listens_for(StackPool, "checkin")
def _mark_idle(dbapi_connection: Any, record: Any) -> None:
    if dbapi_connection is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


@event.listens_for(StackPool, "checkout")
def _check_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Ping a connection that sat idle for PING_AFTER_IDLE_S; a dead one invalidates the pool."""
    idle_since = record.info.get(_IDLE_SINCE)
    if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_S:
        return  # new, or in use a moment ago
    autocommit = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True  # a ping outside any transaction: one round trip
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.autocommit = autocommit
    except Exception as error:
        # As a failed pre-ping: SQLAlchemy replaces this connection and every older one.
        raise sa_exc.InvalidatePoolError(f"idle connection failed its check: {error}") from error


@event.listens_for(AutocommitReadsPool, "checkout")
def _read_without_transaction(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    dbapi_connection.autocommit = True  # the driver's own flag: no round trip
    record.info[_READS_AUTOCOMMIT] = True


@event.listens_for(Engine, "before_cursor_execute")
def begin_before_writes(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    """Start the transaction before a connection's first statement that is not a plain read."""
    fairy = conn.connection
    if not fairy.info.get(_READS_AUTOCOMMIT):
        return  # another pool, or this checkout already began its transaction
    if (
        READ_ONLY.match(statement)
        and not NEEDS_TRANSACTION.search(statement)
        and getattr(cursor, "name", None) is None  # a server-side cursor needs a transaction
    ):
        return
    if context is not None and "isolation_level" in context.execution_options:
        fairy.info[_READS_AUTOCOMMIT] = False  # the app chose the level; leave it as it is
        return
    fairy.dbapi_connection.autocommit = False  # the driver sends BEGIN before this statement
    fairy.info[_READS_AUTOCOMMIT] = False


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
        # StackPool's idle check replaces the pre-ping's round trip on every checkout.
        options["poolclass"] = StackPool
        options["pool_pre_ping"] = False
        if settings["DB_AUTOCOMMIT_READS"]:
            options["poolclass"] = AutocommitReadsPool
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
                if "isolation_level" in theirs and ours.get("poolclass") is AutocommitReadsPool:
                    ours["poolclass"] = StackPool  # the app's level, for reads too
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
