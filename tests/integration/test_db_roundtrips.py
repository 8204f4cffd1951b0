"""The extension's pool on a real Postgres: reads without a transaction, writes still atomic,
and a connection checked before use only when it sat idle."""

from __future__ import annotations

import select
import time

import psycopg2
import psycopg2.extensions as ext
import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.config import database_uri
from app.extensions import db
from app.models import World
from flaskstack.extension import PING_AFTER_IDLE_S, AutocommitReadsPool, StackPool


def driver_connection():
    """The DBAPI connection under the request's session."""
    return db.session.connection().connection.dbapi_connection


def transaction_status() -> int:
    return driver_connection().info.transaction_status


def test_a_read_opens_no_transaction(app: Flask) -> None:
    with app.app_context():
        assert isinstance(db.engine.pool, AutocommitReadsPool)
        assert db.session.get(World, 1) is not None
        db.session.scalar(text("SELECT count(*) FROM fortune"))
        # No BEGIN was sent, so there is nothing for the session's end to roll back.
        assert transaction_status() == ext.TRANSACTION_STATUS_IDLE


def test_the_first_write_begins_a_transaction_that_a_rollback_undoes(app: Flask) -> None:
    with app.app_context():
        number = db.session.get(World, 1).random_number
        assert transaction_status() == ext.TRANSACTION_STATUS_IDLE
        db.session.execute(text("UPDATE world SET randomnumber = -1 WHERE id = 1"))
        assert transaction_status() == ext.TRANSACTION_STATUS_INTRANS
        db.session.execute(text("UPDATE world SET randomnumber = -2 WHERE id = 2"))
        db.session.rollback()
        rows = db.session.execute(text("SELECT id, randomnumber FROM world WHERE id IN (1, 2)"))
        assert all(value > 0 for _, value in rows)
        assert db.session.get(World, 1).random_number == number


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT id FROM world WHERE id = 1 FOR UPDATE",
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT set_config('application_name', 'x', true)",
        "WITH w AS (SELECT 1) SELECT * FROM w",
        "SET LOCAL statement_timeout = 1000",
        "SELECT id INTO TEMP TABLE scratch_ids FROM world WHERE id < 3",
    ],
)
def test_statements_that_need_a_transaction_get_one(app: Flask, statement: str) -> None:
    with app.app_context():
        db.session.execute(text(statement))
        assert transaction_status() == ext.TRANSACTION_STATUS_INTRANS
        db.session.rollback()


def test_a_notify_waits_for_the_commit(app: Flask, database_url: str) -> None:
    listener = psycopg2.connect(database_uri(database_url, ".").replace("+psycopg2", ""))
    listener.autocommit = True
    try:
        listener.cursor().execute("LISTEN roundtrip_test")
        with app.app_context():
            db.session.execute(text("SELECT pg_notify('roundtrip_test', 'rolled back')"))
            db.session.rollback()
            db.session.execute(text("SELECT pg_notify('roundtrip_test', 'committed')"))
            db.session.commit()
        deadline = time.monotonic() + 5
        while not listener.notifies and time.monotonic() < deadline:
            select.select([listener], [], [], 0.5)
            listener.poll()
        assert [n.payload for n in listener.notifies] == ["committed"]
    finally:
        listener.close()


def test_a_server_side_cursor_runs_in_a_transaction(app: Flask) -> None:
    with app.app_context():
        rows = db.session.execute(
            text("SELECT id FROM world ORDER BY id LIMIT 3"),
            execution_options={"stream_results": True},
        )
        assert [row.id for row in rows] == [1, 2, 3]


def test_the_apps_isolation_level_is_left_alone(app_factory) -> None:
    app = app_factory(SQLALCHEMY_ENGINE_OPTIONS={"isolation_level": "REPEATABLE READ"})
    with app.app_context():
        assert type(db.engine.pool) is StackPool
        db.session.get(World, 1)
        assert transaction_status() == ext.TRANSACTION_STATUS_INTRANS
        level = db.session.scalar(text("SHOW transaction_isolation"))
        assert level == "repeatable read"


def test_an_explicit_autocommit_connection_stays_autocommit(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("CREATE TEMP TABLE scratch (x int)"))
        assert connection.connection.dbapi_connection.autocommit is True


def terminate_app_sessions(database_url: str) -> set[int]:
    """End every session the app holds, from outside its pool; return their pids."""
    outside = create_engine(database_uri(database_url, "."), poolclass=NullPool)
    try:
        with outside.begin() as connection:
            rows = connection.execute(
                text(
                    "WITH app AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = 'flaskstack-app') "
                    "SELECT pid FROM app WHERE pg_terminate_backend(pid)"
                )
            )
            return set(rows.scalars())
    finally:
        outside.dispose()


def backend_pid(app: Flask) -> int:
    with app.app_context():
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        db.session.commit()  # back to the pool, still open
    return pid


def test_an_idle_connection_that_died_is_replaced_before_use(app: Flask, database_url: str) -> None:
    client = app.test_client()
    pooled = backend_pid(app)
    assert pooled in terminate_app_sessions(database_url)
    time.sleep(PING_AFTER_IDLE_S + 0.2)  # the connection has now sat idle
    assert client.get("/readyz").status_code == 200
    assert client.get("/api/posts").status_code == 200
    assert backend_pid(app) != pooled


def test_a_connection_that_died_while_busy_costs_one_503(app: Flask, database_url: str) -> None:
    client = app.test_client()
    pooled = backend_pid(app)
    assert pooled in terminate_app_sessions(database_url)
    # Used a moment ago, so not checked: this request finds it dead and invalidates the pool.
    first = client.get("/api/posts")
    assert first.status_code == 503
    assert first.json["error"]["code"] == "database_unavailable"
    assert client.get("/api/posts").status_code == 200
    assert backend_pid(app) != pooled
