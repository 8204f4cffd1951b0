"""Postgres unreachable or restarted: 503 JSON, never 500, and recovery without a restart."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.config import database_uri
from app.extensions import db
from tests.conftest import AuthActions


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/readyz", {}),
        ("get", "/api/posts", {}),
        ("get", "/api/auth/me", {}),
        ("post", "/api/posts", {"json": {"title": "t", "body": "b"}}),
        (
            "post",
            "/api/uploads",
            {"data": {"file": (io.BytesIO(b"x"), "a.txt")}, "content_type": "multipart/form-data"},
        ),
        ("post", "/api/auth/register", {"json": {"username": "dave", "password": "long-enough"}}),
        ("get", "/bench/queries?queries=3", {}),
        ("get", "/bench/updates?queries=3", {}),
    ],
)
def test_closed_port_is_503(
    app_factory, auth: AuthActions, unreachable_database_url: str, method, path, kwargs
) -> None:
    down = app_factory(DATABASE_URL=unreachable_database_url)
    token = AuthActions(down, down.test_client()).token_for(1)
    response = getattr(down.test_client(), method)(
        path, headers={"Authorization": f"Bearer {token}"}, **kwargs
    )
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_unavailable"
    assert "psycopg2" not in response.get_data(as_text=True)


def test_killed_connections_are_replaced(app: Flask, database_url: str) -> None:
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    with app.app_context():
        pooled = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        db.session.commit()  # back to the pool, still open
    # From outside the app's pool (psycopg2's default application_name is empty), end every
    # session the app holds: the one it just used is among them.
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
            killed = set(rows.scalars())
    finally:
        outside.dispose()
    assert pooled in killed, (pooled, killed)
    # pool_pre_ping notices the dead pooled connection at checkout and reconnects.
    assert client.get("/readyz").status_code == 200
    assert client.get("/api/posts").status_code == 200
    with app.app_context():
        assert db.session.execute(text("SELECT pg_backend_pid()")).scalar_one() not in killed
