"""The migrations build exactly the schema the models describe, and downgrade cleanly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app.extensions import db


def schema_diff(app: Flask) -> list:
    """Return Alembic's differences between the database and the models."""
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_upgrade_head_matches_the_models(app: Flask) -> None:
    assert schema_diff(app) == []


def test_downgrade_to_base_and_back(app: Flask) -> None:
    with app.app_context():
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        upgrade()
    assert schema_diff(app) == []
