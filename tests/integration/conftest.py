"""Integration tests run on a real Postgres from TEST_DATABASE_URL (its tables are wiped).

Isolation, decided here once: the schema is built by the migrations once per session and the
benchmark tables are seeded once; before each test the API tables are truncated (RESTART IDENTITY).
Truncation rather than transaction rollback, because the app commits and several tests use
concurrent connections that a wrapping transaction would hide from each other.
"""

from __future__ import annotations

import os

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app.cli import seed_fortunes, seed_world
from app.config import database_uri
from app.extensions import db
from tests.conftest import dispose, make_app
from tests.hostproc import host_factory  # noqa: F401 (a fixture for the tests here)

API_TABLES = ("idempotency_keys", "uploads", "posts", "users")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Return TEST_DATABASE_URL after migrating it from scratch and seeding it."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.fail(
            "TEST_DATABASE_URL is not set: integration tests need a real Postgres, e.g. "
            "TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/app_test "
            "(the tables in that database are wiped)",
            pytrace=False,
        )
    app = make_app(url)
    with app.app_context():
        db.drop_all()
        with db.engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
        upgrade()
        seed_world()
        seed_fortunes()
        db.session.commit()
    dispose(app)
    return url


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """Empty the API tables before the test; the benchmark tables stay seeded."""
    engine = create_engine(database_uri(postgres_url, "."))
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(API_TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return postgres_url


@pytest.fixture
def unreachable_database_url() -> str:
    """A Postgres URL pointing at a closed port."""
    return "postgresql://postgres:x@127.0.0.1:1/app"
