"""setup-db migrates and seeds, idempotently; seed alone; the bootstrap admin."""

from pathlib import Path

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import Fortune, User, World

ADMIN = {"ADMIN_USERNAME": "root", "ADMIN_PASSWORD": "a-long-admin-password"}


def counts(app: Flask) -> tuple[int, int, list[tuple[str, str]]]:
    """Return the World and Fortune counts and the users with roles."""
    with app.app_context():
        worlds = db.session.scalar(select(func.count()).select_from(World))
        fortunes = db.session.scalar(select(func.count()).select_from(Fortune))
        users = [tuple(row) for row in db.session.execute(select(User.username, User.role))]
    return worlds, fortunes, users


def test_setup_db_on_an_empty_database_is_idempotent(app_factory, tmp_path: Path) -> None:
    app = app_factory(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite'}", **ADMIN)
    first = app.test_cli_runner().invoke(args=["setup-db"])
    assert first.exit_code == 0, first.output
    assert "world +10000" in first.output
    assert counts(app) == (10_000, 12, [("root", "admin")])
    with app.app_context():
        admin_hash = db.session.scalar(select(User.password_hash))
    second = app.test_cli_runner().invoke(args=["setup-db"])
    assert second.exit_code == 0, second.output
    assert "world +0" in second.output
    assert counts(app) == (10_000, 12, [("root", "admin")])
    with app.app_context():
        assert db.session.scalar(select(User.password_hash)) == admin_hash


def test_seed_promotes_an_existing_user(app_factory, auth) -> None:
    auth.register("root")
    app = app_factory(**ADMIN)
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    assert counts(app)[2] == [("root", "admin")]


def test_seed_refuses_a_weak_admin_password(app_factory) -> None:
    app = app_factory(ADMIN_USERNAME="root", ADMIN_PASSWORD="short")
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code != 0
    assert "ADMIN_PASSWORD" in result.output


def test_seed_without_admin_settings_skips_the_admin(runner) -> None:
    result = runner.invoke(args=["seed"])
    assert result.exit_code == 0
    assert "admin skipped" in result.output
