"""The demo Flask app of the deployment reference stack."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from . import auth, bench, cli, echo, errors, events, health, middleware, openapi, posts, uploads
from .config import ConfigError, load_config
from .extensions import db, jwt, migrate, stack
from .logs import configure_logging
from .validation import IdConverter

__version__ = "0.1.0"
__all__ = ["ConfigError", "create_app"]
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the app; config is read from the environment here, once."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(load_config(overrides, app.instance_path), VERSION=__version__)
    if app.debug and app.config["APP_ENV"] == "production":
        raise ConfigError("debug mode is not allowed in production")
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if not app.config["DATABASE_URL"]:  # the embedded SQLite file lives in the instance folder
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.url_map.converters["id"] = IdConverter

    stack.init_app(app, db)  # before db.init_app: it sizes the pool
    db.init_app(app)
    jwt.init_app(app)
    auth.init_jwt(jwt)
    migrate.init_app(
        app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True, compare_type=True
    )
    app.extensions["events"] = events  # the host subscribes here when there is no Postgres
    middleware.init_app(app)
    errors.register_error_handlers(app)
    for module in (health, auth, posts, uploads, echo, bench, openapi):
        app.register_blueprint(module.bp)
    cli.init_app(app)
    return app
