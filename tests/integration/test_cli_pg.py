"""setup-db on Postgres: migrations are already at head, the seed is idempotent."""

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import Fortune, User, World

ADMIN = {"ADMIN_USERNAME": "root", "ADMIN_PASSWORD": "a-long-admin-password"}


def test_setup_db_twice(app_factory) -> None:
    app: Flask = app_factory(**ADMIN)
    for _ in range(2):
        result = app.test_cli_runner().invoke(args=["setup-db"])
        assert result.exit_code == 0, result.output
        assert "world +0 (10000 rows)" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(World)) == 10_000
        assert db.session.scalar(select(func.count()).select_from(Fortune)) == 12
        users = db.session.execute(select(User.username, User.role)).all()
    assert [tuple(u) for u in users] == [("root", "admin")]
