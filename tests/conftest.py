"""Shared fixtures, shaped like flaskr's: app, client, runner, auth.

The backend is chosen by folder: tests/unit/conftest.py gives each test a fresh SQLite file copied
from a migrated template; tests/integration/conftest.py gives a real Postgres (TEST_DATABASE_URL)
that is migrated once per session and isolated per test by truncation.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from flask_jwt_extended import create_access_token
from sqlalchemy import select

from app import create_app
from app.extensions import db
from app.models import User

PASSWORD = "correct-horse-battery"
# Every setting pinned, so a developer's environment cannot leak into the tests.
BASE_CONFIG: dict[str, Any] = {
    "APP_ENV": "testing",
    "SECRET_KEY": "test-secret-key-" + "x" * 32,
    "JWT_SECRET_KEY": "test-jwt-secret-key-" + "y" * 32,
    "BCRYPT_ROUNDS": 4,
    "CORS_ORIGINS": "",
    "MAX_UPLOAD_MB": 1,
    "UPLOAD_ACCEL_PREFIX": "",
    "ADMIN_USERNAME": None,
    "ADMIN_PASSWORD": None,
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "text",
    "DB_POOL_SIZE": 5,
    "DB_MAX_OVERFLOW": 2,
}


def make_app(database_url: str, **overrides: Any) -> Flask:
    """Create a test app on database_url with BASE_CONFIG plus overrides."""
    return create_app({**BASE_CONFIG, "DATABASE_URL": database_url, **overrides})


def dispose(app: Flask) -> None:
    """Close every pooled connection of app (no ResourceWarning, no leaked Postgres sessions)."""
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def app_factory(database_url: str, tmp_path: Any) -> Iterator[Any]:
    """Return a function building extra apps on the test database; all are disposed afterwards."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        overrides.setdefault("UPLOAD_DIR", str(tmp_path / "uploads"))
        overrides.setdefault("DATABASE_URL", database_url)
        app = create_app({**BASE_CONFIG, **overrides})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        dispose(app)


@pytest.fixture
def app(app_factory: Any) -> Flask:
    """The app under test, on this test's database."""
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner."""
    return app.test_cli_runner()


class AuthActions:
    """Register, log in and mint tokens for tests."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self._app = app
        self._client = client

    def register(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        """Register a user and return its JSON."""
        response = self._client.post(
            "/api/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.json
        return response.json

    def login(self, username: str = "alice", password: str = PASSWORD) -> str:
        """Log in and return the access token."""
        response = self._client.post(
            "/api/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.json
        return response.json["access_token"]

    def headers(self, username: str = "alice", role: str = "user") -> dict[str, str]:
        """Return Authorization headers for username, registering it (with role) if needed."""
        with self._app.app_context():
            exists = db.session.scalar(select(User.id).where(User.username == username))
        if exists is None:
            self.register(username)
        if role != "user":
            self.set_role(username, role)
        return {"Authorization": f"Bearer {self.login(username)}"}

    def set_role(self, username: str, role: str) -> None:
        """Change a user's role directly in the database."""
        with self._app.app_context():
            user = db.session.scalar(select(User).where(User.username == username))
            assert user is not None
            user.role = role
            db.session.commit()

    def token_for(self, user_id: int, expires: timedelta | None = None, **claims: Any) -> str:
        """Mint a token for user_id with the app's key (optionally already expired)."""
        with self._app.app_context():
            return create_access_token(
                identity=str(user_id), additional_claims=claims or None, expires_delta=expires
            )


@pytest.fixture
def auth(app: Flask, client: FlaskClient) -> AuthActions:
    """The auth helper."""
    return AuthActions(app, client)
