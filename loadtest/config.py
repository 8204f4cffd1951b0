"""The settings of a load test: environment variables and the same-named flags, as one Config.

Every setting is an environment variable and a flag (`USERS=20` or `--users 20`); SMOKE=1
shortens the defaults. loadtest/README.md lists them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"

# Scenario name -> its user class in locustfile.py.
SCENARIOS = {
    "plaintext": "PlaintextUser",
    "json": "JsonUser",
    "db": "DbUser",
    "queries": "QueriesUser",
    "fortunes": "FortunesUser",
    "io": "IoUser",
    "api": "ApiUser",
}
# Scenarios that are not one Locust user class, each run by its own module after the rest.
REALTIME = "realtime"  # loadtest/realtime.py: connected clients and fan-out, the stack only


@dataclass
class Config:
    """Every setting of one load test; results.json keeps them under "config"."""

    scenarios: list[str]
    users: int
    duration: float
    warmup: float
    rounds: int
    stack_url: str
    baseline_url: str
    reference: bool
    ref_nothread_url: str
    ref_gunicorn_url: str
    ceiling_url: str
    ceiling_duration: float
    results_dir: str
    smoke: bool
    shape: str
    processes: str
    compose_project: str
    login_rate: float
    api_accounts: int
    step_users: int
    step_time: float
    step_max: int
    timeout: float
    docker_stats: bool
    profile: bool
    # Nothing sets it; results.json has always carried it (empty), so it stays for its readers.
    extra: dict[str, Any] = field(default_factory=dict)
    # LOCUSTFILE: your own scenarios, one per user class in that file ("" for the demo's).
    locustfile: str = ""
    # Scenario name -> its user class: SCENARIOS, or the classes of LOCUSTFILE by their names.
    classes: dict[str, str] = field(default_factory=lambda: dict(SCENARIOS))
    # PROMETHEUS_URL: the stack's Prometheus, for each route's server-side p99 ("": not asked).
    prometheus_url: str = ""

    def needs_accounts(self, scenario: str) -> bool:
        """Whether the runner signs users in before the runs: the demo's `api` only."""
        return scenario == "api" and not self.locustfile


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def user_classes(locustfile: Path) -> list[str]:
    """The user classes Locust finds in a locustfile (abstract ones left out), in its order."""
    proc = subprocess.run(  # noqa: S603 - our own argv, no shell
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE.parent,
        check=False,
    )
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or "Available Users:" not in lines:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise ValueError(said[-1] if said else f"exit {proc.returncode}")
    return [line.strip() for line in lines[lines.index("Available Users:") + 1 :] if line.strip()]


def parse_config(argv: list[str], description: str | None = None) -> Config:
    """The Config from the environment, overridden by flags; argparse exits on a bad value."""
    smoke = _flag(_env("SMOKE", "0"))
    # Defaults: 7 scenarios x 2 targets x 3 rounds x (2 s warm-up + 8 s) plus the ceiling
    # and account set-up come to about 8 minutes on a 2-core machine.
    d = {
        "users": "10" if smoke else "50",
        "duration": "3" if smoke else "8",
        "warmup": "1" if smoke else "2",
        "rounds": "1" if smoke else "3",
        "ceiling_duration": "2" if smoke else "5",
        "api_accounts": "3" if smoke else "10",
    }
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--scenarios", default=_env("SCENARIOS", ""), help="comma list (default: all)")
    add(
        "--locustfile",
        default=_env("LOCUSTFILE", ""),
        help="your own locustfile: each user class in it is a scenario, named after the class",
    )
    add("--users", type=int, default=int(_env("USERS", d["users"])))
    add(
        "--duration",
        type=float,
        default=float(_env("DURATION", d["duration"])),
        help="seconds measured per run",
    )
    add(
        "--warmup",
        type=float,
        default=float(_env("WARMUP", d["warmup"])),
        help="seconds before measuring",
    )
    add("--rounds", type=int, default=int(_env("ROUNDS", d["rounds"])))
    add("--stack-url", default=_env("STACK_URL", "http://127.0.0.1:8080"))
    add("--baseline-url", default=_env("BASELINE_URL", "http://127.0.0.1:5000"))
    add(
        "--prometheus-url",
        default=_env("PROMETHEUS_URL", ""),
        help="the stack's Prometheus: each route's server-side p99 in the report (empty: off)",
    )
    add("--reference", action="store_true", default=_flag(_env("REFERENCE", "0")))
    add("--ref-nothread-url", default=os.environ.get("REF_NOTHREAD_URL", ""))
    add("--ref-gunicorn-url", default=os.environ.get("REF_GUNICORN_URL", ""))
    add("--ceiling-url", default=_env("CEILING_URL", ""))
    add(
        "--ceiling-duration",
        type=float,
        default=float(_env("CEILING_DURATION", d["ceiling_duration"])),
    )
    add("--results-dir", default=_env("RESULTS_DIR", str(HERE / "results")))
    add("--smoke", action="store_true", default=smoke)
    add("--shape", default=_env("SHAPE", ""), choices=["", "step"])
    add("--processes", default=_env("PROCESSES", "auto"), help="Locust worker processes: auto or N")
    # The Makefile exports PROJECT (the test stack is another project beside yours).
    project = _env("COMPOSE_PROJECT", _env("PROJECT", _env("COMPOSE_PROJECT_NAME", "flaskstack")))
    add("--compose-project", default=project)
    add(
        "--login-rate",
        type=float,
        default=float(_env("LOGIN_RATE", "1")),
        help="re-logins/s in api",
    )
    add("--api-accounts", type=int, default=int(_env("API_ACCOUNTS", d["api_accounts"])))
    add("--step-users", type=int, default=int(_env("STEP_USERS", "5" if smoke else "50")))
    add("--step-time", type=float, default=float(_env("STEP_TIME", "3" if smoke else "8")))
    add("--step-max", type=int, default=int(_env("STEP_MAX", "10" if smoke else "600")))
    add(
        "--docker-stats",
        default=_env("DOCKER_STATS", "1"),
        help="0: do not read the containers' memory and CPU from their cgroups",
    )
    add("--profile", action="store_true", default=_flag(_env("PROFILE", "0")), help="py-spy pass")
    add(
        "--timeout",
        type=float,
        default=float(_env("REQUEST_TIMEOUT", "10")),
        help="per request, seconds",
    )
    a = p.parse_args(argv)
    classes = dict(SCENARIOS)
    locustfile = ""
    if a.locustfile:
        path = Path(a.locustfile).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not path.is_file():
            p.error(f"LOCUSTFILE {a.locustfile}: no such file")
        try:
            found = user_classes(path)
        except (ValueError, subprocess.TimeoutExpired) as exc:
            p.error(f"LOCUSTFILE {a.locustfile}: Locust could not load it: {exc}")
        if not found:
            p.error(f"LOCUSTFILE {a.locustfile} has no user class (a non-abstract User)")
        classes = {name: name for name in found}
        locustfile = str(path)
    # Step mode takes about 100 s per scenario and target: two telling scenarios by default.
    # The realtime scenario belongs to the demo app (its /ws, socket.io and posts).
    extra = [] if locustfile else [REALTIME]
    default = "json,io" if a.shape == "step" and not locustfile else ",".join([*classes, *extra])
    scenarios = [s.strip() for s in (a.scenarios or default).split(",") if s.strip()]
    known = [*classes, *extra]
    unknown = [s for s in scenarios if s not in known]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if a.processes != "auto" and not a.processes.isdigit():
        p.error("PROCESSES must be auto or a number")
    stack = a.stack_url.rstrip("/")
    return Config(
        scenarios=scenarios,
        users=a.users,
        duration=a.duration,
        warmup=a.warmup,
        rounds=a.rounds,
        stack_url=stack,
        baseline_url=a.baseline_url.rstrip("/"),
        reference=a.reference,
        ref_nothread_url=(a.ref_nothread_url or f"{stack}/ref/tornado-nothread").rstrip("/"),
        ref_gunicorn_url=(a.ref_gunicorn_url or f"{stack}/ref/gunicorn").rstrip("/"),
        ceiling_url=a.ceiling_url or f"{stack}/nginx/plaintext",
        ceiling_duration=a.ceiling_duration,
        results_dir=a.results_dir,
        smoke=a.smoke,
        shape=a.shape,
        processes=a.processes,
        compose_project=a.compose_project,
        login_rate=a.login_rate,
        api_accounts=max(1, a.api_accounts),
        step_users=a.step_users,
        step_time=a.step_time,
        step_max=a.step_max,
        timeout=a.timeout,
        docker_stats=_flag(a.docker_stats),
        profile=a.profile,
        locustfile=locustfile,
        classes=classes,
        prometheus_url=a.prometheus_url.strip().rstrip("/"),
    )
