"""Configuration: defaults, environment loading, and refusal of unsafe production settings."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from flaskstack.settings import MAX_UPLOAD_MB_LIMIT

ENVIRONMENTS = ("production", "development", "testing")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_SECRET_LENGTH = 32
MIN_PRODUCTION_BCRYPT_ROUNDS = 12
# Placeholder fragments that mark a secret as "not set yet" (e.g. copied from .env.example).
UNSAFE_SECRET_MARKERS = ("change", "example", "default", "placeholder", "insecure", "secret")

# Raw settings read from the environment, with their defaults (None: no value).
ENV_DEFAULTS: dict[str, str | None] = {
    "APP_ENV": "production",
    "SECRET_KEY": None,
    "JWT_SECRET_KEY": None,
    "JWT_ACCESS_MINUTES": "15",
    "DATABASE_URL": None,
    "DB_POOL_SIZE": None,  # APP_THREADS, else 16: a connection per pool thread
    "DB_MAX_OVERFLOW": "2",
    "DB_POOL_TIMEOUT": "3",
    "DB_CONNECT_TIMEOUT": "3",
    "DB_STATEMENT_TIMEOUT_MS": "0",
    "CORS_ORIGINS": "",
    "MAX_UPLOAD_MB": "10",
    "UPLOAD_DIR": None,
    "UPLOAD_ACCEL_PREFIX": "",
    "ADMIN_USERNAME": None,
    "ADMIN_PASSWORD": None,
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    "BCRYPT_ROUNDS": None,
}
# Settings that may instead come from a file named by <KEY>_FILE (Docker and Swarm secrets,
# mounted under /run/secrets/, which `docker inspect` does not show as environment variables).
FILE_SETTINGS = ("SECRET_KEY", "JWT_SECRET_KEY", "DATABASE_URL", "ADMIN_PASSWORD")
INT_SETTINGS = {
    "JWT_ACCESS_MINUTES": (1, 24 * 60),
    "DB_POOL_SIZE": (1, 1000),
    "DB_MAX_OVERFLOW": (0, 1000),
    "DB_POOL_TIMEOUT": (1, 60),
    "DB_CONNECT_TIMEOUT": (1, 60),
    "DB_STATEMENT_TIMEOUT_MS": (0, 3_600_000),
    "MAX_UPLOAD_MB": (1, MAX_UPLOAD_MB_LIMIT),
    "BCRYPT_ROUNDS": (4, 31),
}


class ConfigError(RuntimeError):
    """Raised when the configuration is unusable or unsafe; the message names the keys."""


def load_config(
    overrides: Mapping[str, Any] | None, instance_path: str, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """Return the Flask config built from the environment, then overrides, then checked."""
    settings: dict[str, Any] = {k: environ.get(k, v) for k, v in ENV_DEFAULTS.items()}
    settings.update(_file_settings(environ))
    settings = {
        k: (None if v == "" and ENV_DEFAULTS[k] is None else v) for k, v in settings.items()
    }
    settings.update(overrides or {})
    env = settings["APP_ENV"]
    if env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}")
    if settings["DB_POOL_SIZE"] is None:
        settings["DB_POOL_SIZE"] = environ.get("APP_THREADS") or "16"
    if settings["BCRYPT_ROUNDS"] is None:
        settings["BCRYPT_ROUNDS"] = "4" if env == "testing" else "12"
    for key, (low, high) in INT_SETTINGS.items():
        settings[key] = _int_setting(key, settings[key], low, high)
    _check_secrets(settings)
    settings["LOG_FORMAT"] = str(settings["LOG_FORMAT"]).lower()
    if settings["LOG_FORMAT"] not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be json or text")
    settings["LOG_LEVEL"] = str(settings["LOG_LEVEL"]).upper()
    if settings["LOG_LEVEL"] not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    config = dict(settings)
    config["TESTING"] = env == "testing"
    config["CORS_ORIGINS"] = _split_list(settings["CORS_ORIGINS"])
    config["UPLOAD_DIR"] = settings["UPLOAD_DIR"] or str(Path(instance_path) / "uploads")
    config["MAX_CONTENT_LENGTH"] = settings["MAX_UPLOAD_MB"] * 1024 * 1024
    config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(minutes=settings["JWT_ACCESS_MINUTES"])
    config["JWT_TOKEN_LOCATION"] = ["headers"]
    config["JWT_ALGORITHM"] = "HS256"
    config["JWT_DECODE_ALGORITHMS"] = ["HS256"]
    uri = database_uri(settings["DATABASE_URL"], instance_path)
    config["SQLALCHEMY_DATABASE_URI"] = uri
    # Flask-level overrides (e.g. SQLALCHEMY_ENGINE_OPTIONS in a test) win over derived values;
    # the pool itself is sized from the DB_* values by flaskstack.extension in create_app.
    config.update({k: v for k, v in (overrides or {}).items() if k not in ENV_DEFAULTS})
    return config


def _file_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Read each <KEY>_FILE that is set; its content, without the final newline, is KEY."""
    found = {}
    for key in FILE_SETTINGS:
        path = environ.get(f"{key}_FILE")
        if not path:
            continue
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"{key}_FILE: cannot read {path} ({exc.strerror})") from None
        # The host copies a secret file into KEY (flaskstack.secrets): the same value agrees.
        if environ.get(key) and environ[key] != value:
            raise ConfigError(f"set {key} or {key}_FILE, not both")
        found[key] = value
    return found


def database_uri(url: str | None, instance_path: str) -> str:
    """Return the SQLAlchemy URI: DATABASE_URL with psycopg2 as driver, or a SQLite file."""
    if not url:
        return f"sqlite:///{Path(instance_path) / 'app.sqlite'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def _int_setting(key: str, value: Any, low: int, high: int) -> int:
    """Parse an integer setting and check its range, naming the key on failure."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer") from None
    if not low <= number <= high:
        raise ConfigError(f"{key} must be between {low} and {high}")
    return number


def _check_secrets(settings: dict[str, Any]) -> None:
    """Refuse unsafe secrets in production; elsewhere use a random per-process secret if unset."""
    if settings["APP_ENV"] != "production":
        for key in ("SECRET_KEY", "JWT_SECRET_KEY"):
            settings[key] = settings[key] or secrets.token_urlsafe(32)
        return
    problems = [
        f"{key} {why}"
        for key in ("SECRET_KEY", "JWT_SECRET_KEY")
        if (why := _unsafe(settings[key]))
    ]
    if settings["BCRYPT_ROUNDS"] < MIN_PRODUCTION_BCRYPT_ROUNDS:
        problems.append(f"BCRYPT_ROUNDS is below {MIN_PRODUCTION_BCRYPT_ROUNDS}")
    if problems:
        raise ConfigError("refusing to start in production: " + "; ".join(problems))


def _unsafe(value: str | None) -> str | None:
    """Say why a secret is unsafe, or return None when it is fine."""
    if not value:
        return "is missing"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    if any(marker in value.lower() for marker in UNSAFE_SECRET_MARKERS):
        return "looks like a default or placeholder value"
    return None


def _split_list(value: str | list[str] | None) -> list[str]:
    """Split a comma list into its non-empty, stripped items."""
    if isinstance(value, list):
        return value
    return [item.strip() for item in (value or "").split(",") if item.strip()]
