"""Configuration: env loading, production refusals, pool and upload settings."""

import logging
from pathlib import Path

import pytest

from app import create_app
from app.config import ConfigError, load_config
from flaskstack.extension import AutocommitReadsPool, db_settings, engine_options

STRONG = "k3Jq9x" * 8


def prod(**env: str) -> dict[str, str]:
    """Return a production environment with strong secrets, plus env."""
    return {"APP_ENV": "production", "SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG[::-1], **env}


def test_default_environment_is_production_and_refuses_missing_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, str(tmp_path), environ={})
    assert "SECRET_KEY is missing" in str(raised.value)
    assert "JWT_SECRET_KEY is missing" in str(raised.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("short", "is shorter than 32"), ("change-me-" + "x" * 30, "looks like a default")],
)
def test_production_names_the_unsafe_secret(tmp_path: Path, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, str(tmp_path), environ=prod(JWT_SECRET_KEY=value))
    assert f"JWT_SECRET_KEY {reason}" in str(raised.value)
    assert "SECRET_KEY is" not in str(raised.value).replace("JWT_SECRET_KEY", "")


def test_production_accepts_strong_secrets(tmp_path: Path) -> None:
    config = load_config(None, str(tmp_path), environ=prod())
    assert config["SECRET_KEY"] == STRONG
    assert config["BCRYPT_ROUNDS"] == 12
    assert config["TESTING"] is False


def test_production_refuses_a_low_bcrypt_cost(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BCRYPT_ROUNDS"):
        load_config(None, str(tmp_path), environ=prod(BCRYPT_ROUNDS="4"))


def test_development_generates_ephemeral_secrets(tmp_path: Path) -> None:
    config = load_config(None, str(tmp_path), environ={"APP_ENV": "development"})
    assert len(config["SECRET_KEY"]) >= 32
    assert config["SECRET_KEY"] != config["JWT_SECRET_KEY"]


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"APP_ENV": "staging"}, "APP_ENV"),
        ({"DB_POOL_SIZE": "many"}, "DB_POOL_SIZE"),
        ({"MAX_UPLOAD_MB": "0"}, "MAX_UPLOAD_MB"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, env: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, str(tmp_path), environ=prod(**env))


def test_sqlite_file_in_instance_path_without_database_url(tmp_path: Path) -> None:
    config = load_config(None, str(tmp_path), environ=prod())
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'app.sqlite'}"
    assert config["UPLOAD_DIR"] == str(tmp_path / "uploads")


def test_postgres_url_uses_psycopg2_and_a_small_fast_failing_pool(tmp_path: Path) -> None:
    env = prod(DATABASE_URL="postgres://u:p@db:5432/app", DB_POOL_SIZE="8")
    config = load_config(None, str(tmp_path), environ=env)
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u:p@db:5432/app"
    options = engine_options(config["SQLALCHEMY_DATABASE_URI"], db_settings(config, {}))
    assert options["pool_size"] == 8
    assert options["max_overflow"] <= 5
    assert options["pool_timeout"] <= 5
    assert options["poolclass"] is AutocommitReadsPool  # idle connections checked before use
    assert options["connect_args"]["connect_timeout"] <= 5
    assert "options" not in options["connect_args"]  # the server's timeouts apply


def test_statement_timeout_can_be_set_per_connection(tmp_path: Path) -> None:
    env = prod(DATABASE_URL="postgresql://u@db/app", DB_STATEMENT_TIMEOUT_MS="5000")
    config = load_config(None, str(tmp_path), environ=env)
    options = engine_options(config["SQLALCHEMY_DATABASE_URI"], db_settings(config, {}))
    assert "-c statement_timeout=5000" in options["connect_args"]["options"]
    assert "-c idle_in_transaction_session_timeout=5000" in options["connect_args"]["options"]


def test_upload_and_cors_and_jwt_settings(tmp_path: Path) -> None:
    env = prod(
        MAX_UPLOAD_MB="3",
        CORS_ORIGINS="https://a.example, ,https://b.example",
        JWT_ACCESS_MINUTES="5",
        UPLOAD_ACCEL_PREFIX="/_uploads/",
    )
    config = load_config(None, str(tmp_path), environ=env)
    assert config["MAX_CONTENT_LENGTH"] == 3 * 1024 * 1024
    assert config["CORS_ORIGINS"] == ["https://a.example", "https://b.example"]
    assert config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds() == 300
    assert config["UPLOAD_ACCEL_PREFIX"] == "/_uploads/"


def test_overrides_beat_the_environment(tmp_path: Path) -> None:
    config = load_config({"APP_ENV": "testing"}, str(tmp_path), environ=prod())
    assert config["TESTING"] is True
    assert config["BCRYPT_ROUNDS"] == 4


def test_create_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in prod(DATABASE_URL="sqlite://", LOG_FORMAT="text").items():
        monkeypatch.setenv(key, value)
    app = create_app()
    assert app.config["APP_ENV"] == "production"
    assert not app.debug
    assert not app.testing


def test_create_app_refuses_debug_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in prod(DATABASE_URL="sqlite://", LOG_FORMAT="text").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(ConfigError, match="debug"):
        create_app()


def test_logging_leaves_a_hosts_handlers_alone(app_factory) -> None:
    root = logging.getLogger()
    host_handler = logging.NullHandler()
    root.addHandler(host_handler)
    try:
        app_factory(LOG_LEVEL="ERROR")
        assert not any(getattr(h, "flaskstack", False) for h in root.handlers)
        assert root.level == logging.ERROR
    finally:
        root.removeHandler(host_handler)


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    """Swarm secrets: <KEY>_FILE names a file under /run/secrets holding the value."""
    (tmp_path / "secret_key").write_text(STRONG + "\n")
    (tmp_path / "jwt").write_text(STRONG[::-1])
    (tmp_path / "db").write_text("postgresql://app:pw@postgres:5432/app\n")
    env = {
        "APP_ENV": "production",
        "SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        "JWT_SECRET_KEY_FILE": str(tmp_path / "jwt"),
        "DATABASE_URL_FILE": str(tmp_path / "db"),
    }
    config = load_config(None, str(tmp_path), environ=env)
    assert config["SECRET_KEY"] == STRONG
    assert config["JWT_SECRET_KEY"] == STRONG[::-1]
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg2://app:pw@postgres")


def test_a_secret_file_refuses_ambiguity_and_absence(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match="SECRET_KEY_FILE: cannot read"):
        load_config(None, str(tmp_path), environ=prod(SECRET_KEY="", SECRET_KEY_FILE=missing))
    other = tmp_path / "secret_key"
    other.write_text("not the value SECRET_KEY holds, and long enough to be one: " + "x" * 32)
    with pytest.raises(ConfigError, match="set SECRET_KEY or SECRET_KEY_FILE, not both"):
        load_config(None, str(tmp_path), environ=prod(SECRET_KEY_FILE=str(other)))


def test_a_secret_file_and_the_same_value_in_the_environment_agree(tmp_path: Path) -> None:
    """The host copies /run/secrets files into the environment: the same value twice is fine."""
    value = "Qm9hV3J0dXlQbGFzbWFJbnRlZ3JhbDQ1Njc4OTBhYmNkZWZnaGlqa2xtbm9wcQ"
    secret = tmp_path / "secret_key"
    secret.write_text(value + "\n")
    config = load_config(
        None, str(tmp_path), environ=prod(SECRET_KEY=value, SECRET_KEY_FILE=str(secret))
    )
    assert config["SECRET_KEY"] == value


@pytest.mark.parametrize(
    ("env", "pool"),
    [({}, 16), ({"APP_THREADS": "24"}, 24), ({"APP_THREADS": "24", "DB_POOL_SIZE": "30"}, 30)],
)
def test_the_pool_follows_the_threads_unless_set(tmp_path: Path, env: dict, pool: int) -> None:
    assert load_config(None, str(tmp_path), environ=prod(**env))["DB_POOL_SIZE"] == pool
