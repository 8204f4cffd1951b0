"""flaskstack.extension: the stack's guarantees for any Flask-SQLAlchemy app."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc

from flaskstack.extension import (
    AutocommitReadsPool,
    FlaskStack,
    StackPool,
    db_settings,
    engine_options,
)

PG = "postgresql://u:p@db:5432/app"


def user_app(uri: str, **config: object) -> tuple[Flask, SQLAlchemy]:
    """An app written the ordinary way, with the extension's one line before db.init_app."""
    app = Flask("someone_elses_app")
    app.config.update(SQLALCHEMY_DATABASE_URI=uri, **config)
    db = SQLAlchemy()
    FlaskStack().init_app(app, db)
    db.init_app(app)
    return app, db


@pytest.mark.parametrize(("threads", "pool"), [("4", 4), ("32", 32), ("", 16)])
def test_pool_follows_the_replicas_threads(threads: str, pool: int) -> None:
    options = engine_options(PG, db_settings({}, {"APP_THREADS": threads}))
    assert options["pool_size"] == pool
    assert options["max_overflow"] == 2
    assert options["pool_timeout"] == 3
    assert options["poolclass"] is AutocommitReadsPool
    assert options["connect_args"]["connect_timeout"] == 3


def test_reads_in_a_transaction_when_the_app_says_so() -> None:
    options = engine_options(PG, db_settings({"DB_AUTOCOMMIT_READS": 0}, {}))
    assert options["poolclass"] is StackPool
    app, db = user_app(PG, SQLALCHEMY_ENGINE_OPTIONS={"isolation_level": "SERIALIZABLE"})
    with app.app_context():
        assert type(db.engine.pool) is StackPool


def test_db_pool_size_and_the_apps_config_win_over_the_threads() -> None:
    assert db_settings({}, {"APP_THREADS": "4", "DB_POOL_SIZE": "9"})["DB_POOL_SIZE"] == 9
    settings = db_settings({"DB_POOL_TIMEOUT": 7}, {"DB_POOL_TIMEOUT": "1"})
    assert settings["DB_POOL_TIMEOUT"] == 7


def test_the_engine_is_built_with_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_THREADS", "5")
    app, db = user_app(PG, SQLALCHEMY_ENGINE_OPTIONS={"pool_recycle": 60})
    with app.app_context():
        pool = db.engine.pool
        assert pool.size() == 5
        assert isinstance(pool, AutocommitReadsPool)
        assert pool._recycle == 60  # the app's own option wins
        assert pool._timeout == 3


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_postgres_url_without_a_driver_gets_the_installed_one(scheme: str) -> None:
    app, _ = user_app(f"{scheme}://u:p@db/app")
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u:p@db/app"


def test_called_after_db_init_app_it_says_so() -> None:
    app = Flask("late")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy()
    db.init_app(app)
    with pytest.raises(RuntimeError, match=r"before db\.init_app"):
        FlaskStack().init_app(app, db)


def failing_app(tmp_path: Path, error: Exception) -> Flask:
    app, _ = user_app(f"sqlite:///{tmp_path / 'app.db'}")

    @app.get("/boom")
    def boom() -> str:
        raise error

    return app


def unavailable() -> float:
    value = REGISTRY.get_sample_value("flaskstack_db_unavailable_total", {"reason": "connection"})
    return value or 0.0


def test_an_unreachable_database_is_a_503_envelope_with_retry_after(tmp_path: Path) -> None:
    error = sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    client = failing_app(tmp_path, error).test_client()
    before = unavailable()
    response = client.get("/boom", headers={"Accept": "application/json", "X-Request-ID": "r-1"})
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json["error"]["code"] == "database_unavailable"
    assert "connection refused" not in response.get_data(as_text=True)
    assert unavailable() == before + 1


def test_a_browser_gets_a_page_not_json(tmp_path: Path) -> None:
    error = sa_exc.OperationalError("SELECT 1", {}, Exception("down"))
    client = failing_app(tmp_path, error).test_client()
    response = client.get("/boom", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "Retry-After" in response.headers


def test_other_database_errors_stay_the_apps_500(tmp_path: Path) -> None:
    error = sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    app = failing_app(tmp_path, error)
    seen: list[BaseException] = []

    @app.errorhandler(500)
    def internal(e: Exception) -> tuple[str, int]:
        seen.append(e)
        return "the app's own page", 500

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_data(as_text=True) == "the app's own page"
    assert seen
