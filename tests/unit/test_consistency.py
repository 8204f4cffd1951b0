"""One value per knob and one copy of each cross-process rule, wherever the files repeat them.

.env.example is the documented list. The compose files, the app's and the host's code defaults,
nginx's copies of the request-id rule and the error envelope, and the sizing rule are all held
against it (or against app/contract.py) here, so a default changed in one place only fails.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from app.config import ENV_DEFAULTS
from flaskstack import contract

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tornado"))
from flaskstack.settings import Settings  # noqa: E402

COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml")) + sorted(ROOT.glob("deploy/compose/*.yml"))
NGINX_CONF = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
NGINX_SERVER = (ROOT / "deploy" / "nginx" / "snippets" / "app-server.conf").read_text()
# What the sizing rule keeps free beyond the app's connections: migrate, psql, and Postgres's
# superuser_reserved_connections (README, "Sizing").
RESERVED_CONNECTIONS = 20
LARGEST_SCALE = 5  # `make scale N=5`, the largest scale the defaults are sized for
# Knobs documented as empty because they default to another knob's value.
DERIVED = {
    "SWARM_PORT": "STACK_PORT",
    "DEV_SOURCE": "APP_SOURCE",
    "DB_POOL_SIZE": "APP_THREADS",
    "HSTS_MAX_AGE": "DOMAIN",
}
# Knobs documented as empty because `make env` fills in the value of the user who runs it.
FILLED_BY_MAKE_ENV = {"BACKUP_UID", "BACKUP_GID"}


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example (comments and blank lines skipped)."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_defaults() -> list[tuple[str, str, str]]:
    """(file, variable, default) for every `${VAR:-default}` in the compose files."""
    found = []
    for path in COMPOSE_FILES:
        for name, default in re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", path.read_text()):
            found.append((path.name, name, default))
    return found


ENV = env_example()


@pytest.mark.parametrize(
    ("file", "name", "default"),
    compose_defaults(),
    ids=[f"{f}:{n}" for f, n, _ in compose_defaults()],
)
def test_compose_defaults_match_env_example(file: str, name: str, default: str) -> None:
    if name not in ENV:
        # Not a documented knob (SWARM_PORT and the like): every file must still agree.
        defaults = {d for _f, n, d in compose_defaults() if n == name}
        assert defaults == {default}, f"{name} has different defaults: {defaults}"
        return
    if name in FILLED_BY_MAKE_ENV and not ENV[name]:
        return
    documented = ENV[name] or ENV.get(DERIVED.get(name, ""), "")
    if not ENV[name] and name in DERIVED and default == "":
        return  # passed on empty: the process that reads it derives it from the other knob
    assert default == documented, f"{file}: {name} defaults to {default!r}, not {documented!r}"


def test_required_compose_values_have_no_default_elsewhere() -> None:
    """A value compose requires (`${VAR:?…}`) is never also given a fallback."""
    required, defaulted = set(), {n for _f, n, _d in compose_defaults()}
    for path in COMPOSE_FILES:
        required |= set(re.findall(r"\$\{([A-Z0-9_]+):\?", path.read_text()))
    assert not required & defaulted


# Settings the app reads that are not knobs, so not in .env.example: each has its own test.
NOT_KNOBS = {"UPLOAD_ACCEL_PREFIX"}


@pytest.mark.parametrize(
    "name", sorted(k for k, v in ENV_DEFAULTS.items() if v is not None and k not in NOT_KNOBS)
)
def test_app_defaults_match_env_example(name: str) -> None:
    assert name in ENV, f"app/config.py has a default for {name}, which .env.example omits"
    assert ENV_DEFAULTS[name] == ENV[name], f"app/config.py defaults {name} differently"


def test_upload_accel_prefix_is_nginx_internal_uploads_location() -> None:
    """Off by default (the app sends the file); the stack sets it to nginx's internal location,
    which serves the volume the app writes to."""
    import yaml

    assert ENV_DEFAULTS["UPLOAD_ACCEL_PREFIX"] == ""
    assert "UPLOAD_ACCEL_PREFIX" not in ENV
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prefix = services["app"]["environment"]["UPLOAD_ACCEL_PREFIX"]
    location = re.search(r"location (\S+) \{\s*internal;\s*alias (\S+);", NGINX_SERVER)
    assert location, "app-server.conf has no internal location with an alias"
    assert location.group(1) == prefix
    app_volume = {v.split(":")[0]: v.split(":")[1] for v in services["app"]["volumes"]}
    nginx_volume = {v.split(":")[0]: v.split(":")[1] for v in services["nginx"]["volumes"]}
    assert location.group(2).rstrip("/") == nginx_volume["uploads"] == app_volume["uploads"]


def test_host_defaults_are_env_example_values() -> None:
    """The host reading .env.example's values gets exactly its own defaults."""
    knobs = (
        "APP_THREADS",
        "MAX_UPLOAD_MB",
        "ACCESS_LOG",
        "HTTP_FRONT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "APP_MODULE",
    )
    documented = {k: ENV[k] for k in knobs if k in ENV}
    assert documented.keys() == set(knobs), "a host knob is missing from .env.example"
    assert Settings.from_env(documented) == Settings()


def test_nginx_image_upload_limit_matches() -> None:
    dockerfile = (ROOT / "deploy" / "nginx" / "Dockerfile").read_text()
    assert f"ENV MAX_UPLOAD_MB={ENV['MAX_UPLOAD_MB']}" in dockerfile


def test_sizing_rule_holds_for_the_defaults() -> None:
    """Pool ≥ threads, and the connections fit Postgres at the largest documented scale."""
    pool = int(ENV["DB_POOL_SIZE"] or ENV["APP_THREADS"])
    per_process = pool + int(ENV["DB_MAX_OVERFLOW"])
    assert pool >= int(ENV["APP_THREADS"]), "a thread would wait for a connection"
    devserver = 1  # while the baseline runs: during `make loadtest`, or with BASELINE=1
    # One LISTEN connection per replica, and one for NOTIFY once its socket.io server publishes.
    listeners = 2 * LARGEST_SCALE
    needed = (LARGEST_SCALE + devserver) * per_process + listeners + RESERVED_CONNECTIONS
    assert needed <= int(ENV["POSTGRES_MAX_CONNECTIONS"])


def test_nginx_request_id_rule_is_the_contract() -> None:
    match = re.search(r'map \$http_x_request_id \$req_id \{\s*"~\^(.+?)\$"', NGINX_CONF)
    assert match, "nginx.conf no longer maps $http_x_request_id"
    assert match.group(1) == contract.REQUEST_ID_PATTERN.pattern


def test_nginx_routes_socketio_sessions_by_the_hosts_replica_names() -> None:
    from flaskstack.sio import ROUTABLE_NAME

    match = re.search(
        r'map \$arg_sid \$io_upstream \{\s*"~\^\(\?<io_replica>(.+?)\)\\\." "\$io_replica:(\d+)"',
        NGINX_CONF,
    )
    assert match, "nginx.conf no longer maps $arg_sid to $io_upstream"
    assert match.group(1) == ROUTABLE_NAME.pattern
    assert int(match.group(2)) == Settings.from_env({}).port


def test_nginx_error_codes_are_the_contract() -> None:
    block = re.search(r"map \$status \$error_code \{(.*?)\}", NGINX_CONF, re.S)
    assert block
    codes = dict(re.findall(r"^\s*(\d{3}) (\w+);", block.group(1), re.M))
    assert codes, "no status codes in nginx's $error_code map"
    for status, code in codes.items():
        assert contract.error_code(int(status)) == code, f"nginx codes {status} as {code}"
    pages = re.search(r"error_page ([\d ]+) /_error.json;", NGINX_SERVER)
    assert pages
    assert set(pages.group(1).split()) <= set(codes), "an error page status has no code"


def test_nginx_error_page_is_the_envelope() -> None:
    """nginx's JSON error body, rendered, has exactly the envelope's shape."""
    template = re.search(r"location = /_error.json \{.*?return 200 '(.+?)';", NGINX_SERVER, re.S)
    assert template
    rendered = (
        template.group(1)
        .replace("$status", "502")
        .replace("$error_code", "bad_gateway")
        .replace("$req_id", "abc")
    )
    body = json.loads(rendered)
    expected = contract.error_envelope(502, "abc")
    assert body.keys() == expected.keys()
    assert body["error"].keys() == expected["error"].keys()
    assert body["error"]["code"] == expected["error"]["code"]
    assert body["request_id"] == "abc"


def test_event_channel_has_one_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo NOTIFYs where any replica's host LISTENs for an app without an event bus."""
    from app import events
    from flaskstack import realtime
    from tests.conftest import make_app

    url = "postgresql://u:p@db.example:5432/app"
    monkeypatch.setenv("DATABASE_URL", url)
    demo = make_app(url)
    assert events.listen_target(demo) == realtime.listen_target(object())
    for path in [*ROOT.glob("app/*.py"), *ROOT.glob("deploy/tornado/**/*.py")]:
        if path.name != "contract.py":
            assert '"app_events"' not in path.read_text(), f"{path} spells the channel out"


def test_optional_services_are_profiles_left_off_by_default() -> None:
    """The devserver, monitoring and backups are profiles that .env.example leaves off, each
    switched on by one setting in stack.sh; every other service starts with plain compose."""
    import yaml

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    profiled = {name: s.get("profiles") for name, s in doc["services"].items() if "profiles" in s}
    assert profiled == {
        "devserver": ["baseline"],
        "prometheus": ["monitoring"],
        "nginx-exporter": ["monitoring"],
        "monitor-role": ["monitoring"],
        "postgres-exporter": ["monitoring"],
        "backup": ["backup"],
    }
    switches = {"BASELINE": "baseline", "MONITORING": "monitoring", "BACKUP_SCHEDULE": "backup"}
    stack_sh = (ROOT / "deploy" / "scripts" / "stack.sh").read_text()
    for setting, profile in switches.items():
        assert ENV[setting] == "0", f"{setting} is on in .env.example"
        assert re.search(rf"{setting}.*profiles\+=\({profile}\)", stack_sh) or (
            setting == "BASELINE" and "baseline_on && profiles+=(baseline)" in stack_sh
        ), f"stack.sh no longer turns on the {profile} profile with {setting}=1"
