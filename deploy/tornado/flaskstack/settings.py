"""The host's own knobs, read once from the environment, and its logging.

Everything here is a server setting; the Flask app reads its own configuration in create_app.
Each value is documented in .env.example, and tests/unit/test_consistency.py holds the defaults
below against it and the compose files.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .contract import log_handler

# The largest MAX_UPLOAD_MB any layer accepts (nginx, the host, the demo app's config).
MAX_UPLOAD_MB_LIMIT = 4096


def env_int(environ: Mapping[str, str], name: str, default: int, high: int | None = None) -> int:
    """Read a positive integer setting (at most `high`), failing loudly on nonsense."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value <= 0 or (high is not None and value > high):
        bound = f" and at most {high}" if high is not None else ""
        raise ValueError(f"{name} must be positive{bound}, got {raw!r}")
    return value


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """Read an on/off setting: 1, true, yes or on mean on; unset means off."""
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1, got {raw!r}")


def env_choice(
    environ: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]
) -> str:
    """Read a setting that is one of a few words."""
    raw = environ.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """The host's knobs.

    host, port: where it listens (the image sets HOST=0.0.0.0).
    app_module: the WSGI app, in gunicorn's "module:callable()" form.
    threads: APP_THREADS, the pool that runs the app; size DB_POOL_SIZE to match.
    upload_mb: MAX_UPLOAD_MB; bodies above it plus 1 MiB of multipart framing get a 413.
    idle_timeout: seconds an idle keep-alive connection is kept. It must exceed nginx's
        upstream keepalive_timeout (10 s), or reused connections race with our close and
        POSTs get 502.
    shutdown_timeout: seconds the drain may take; below compose's 30 s grace.
    shutdown_delay: seconds to keep serving after SIGTERM before draining (5 on Swarm, whose
        DNS drops a task 2 s before SIGTERM).
    origins: CORS_ORIGINS, extra origins allowed to open /ws.
    access_log: ACCESS_LOG, one JSON line per request from the host (off behind nginx).
    front: HTTP_FRONT, who parses ordinary requests: "httptools" (flaskstack/front.py) or
        "tornado" (Tornado's HTTP/1 code for every request, as a comparison).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    app_module: str = "app:create_app()"
    threads: int = 16
    upload_mb: int = 10
    idle_timeout: int = 75
    shutdown_timeout: int = 20
    shutdown_delay: float = 0.0
    origins: frozenset[str] = frozenset()
    access_log: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    front: str = "httptools"

    @property
    def max_body(self) -> int:
        """Bytes a request body may have: the app's limit plus 1 MiB for multipart framing."""
        return (self.upload_mb + 1) * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read every knob; an unset or empty variable keeps its default."""
        d = cls()
        return cls(
            host=environ.get("HOST") or d.host,
            port=env_int(environ, "PORT", d.port),
            app_module=environ.get("APP_MODULE") or d.app_module,
            threads=env_int(environ, "APP_THREADS", d.threads),
            upload_mb=env_int(environ, "MAX_UPLOAD_MB", d.upload_mb, MAX_UPLOAD_MB_LIMIT),
            idle_timeout=env_int(environ, "IDLE_TIMEOUT", d.idle_timeout),
            shutdown_timeout=env_int(environ, "SHUTDOWN_TIMEOUT", d.shutdown_timeout),
            shutdown_delay=float(environ.get("SHUTDOWN_DELAY") or d.shutdown_delay),
            origins=frozenset(
                o.strip() for o in environ.get("CORS_ORIGINS", "").split(",") if o.strip()
            ),
            access_log=env_flag(environ, "ACCESS_LOG"),
            log_level=(environ.get("LOG_LEVEL") or d.log_level).upper(),
            log_format=(environ.get("LOG_FORMAT") or d.log_format).lower(),
            front=env_choice(environ, "HTTP_FRONT", d.front, ("httptools", "tornado")),
        )


def configure_logging(settings: Settings) -> None:
    """The stack's log line on stdout, for the host and the app alike (the app's own set-up
    steps aside when it finds this handler); Tornado logs nothing without parse_command_line."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(settings.log_format, sys.stdout)]
    root.setLevel(settings.log_level)


def load_wsgi_app(spec: str) -> Callable[..., Any]:
    """Import "module:attr" or "module:factory()", the form gunicorn takes.

    As gunicorn does, the working directory (the app image's /srv/app) comes first on the import
    path, so the app's own package is found whatever it is called.
    """
    from .secrets import expand

    expand()  # secrets mounted as files, into the environment the app reads
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, expr = spec.partition(":")
    expr = expr or "application"
    call = expr.endswith("()")
    target: Any = importlib.import_module(module_name)
    for part in expr.removesuffix("()").split("."):
        target = getattr(target, part)
    return target() if call else target
