"""Plain compose starts the stack `make up` starts, with Compose 1.29 and with Compose v2.

`make env` writes COMPOSE_FILE, COMPOSE_PROFILES and COMPOSE_PROJECT_NAME into the env file,
so `docker compose up -d` in the repository (here `--env-file`, for a project of its own) must
give the same services, the same replica count and the same health as `make up`, Postgres
included; `make up MONITORING=1` and `COMPOSE_PROFILES=monitoring docker compose up -d` likewise.
With Compose v2 (`make compose-v2` puts the official binary in build/bin), the front door is
driven too: `up --wait`, `make scale` and a rollout with no failed request.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time

import pytest
import requests

from tests.support import ROOT, free_port, run, stack, wait_for

V2_BINARY = ROOT / "build" / "bin" / "docker-compose"
COMPOSE_VARS = ("COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME")
SETTLE_S = 300  # a generous bound for a stack to come up on a loaded machine; not a figure


@pytest.fixture(scope="module", params=["v1", "v2"], ids=["compose-1.29", "compose-v2"])
def setup(request, tmp_path_factory):
    """A project of its own with a fresh env file, and the PATH that selects the compose."""
    yield from project_for(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def setup_v2(tmp_path_factory):
    """The same for Compose v2 only: 1.29's rollout is the fault suite's."""
    yield from project_for("v2", tmp_path_factory, suffix="-roll")


def project_for(version: str, tmp_path_factory, suffix: str = ""):
    bin_dir = tmp_path_factory.mktemp(f"compose-{version}")
    if version == "v2":
        assert V2_BINARY.exists(), "Compose v2 is missing: make compose-v2"
        (bin_dir / "docker-compose").symlink_to(V2_BINARY)
    else:
        v1 = shutil.which("docker-compose")
        assert v1, "docker-compose (1.29) is not installed"
        (bin_dir / "docker-compose").symlink_to(v1)
    project = f"{os.environ.get('PROJECT', 'flaskstack-test')}-plain{version}{suffix}"
    env_file = tmp_path_factory.mktemp("env") / "plain.env"
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}
    env = {
        **base,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PROJECT": project,
        "ENV_FILE": str(env_file),
    }
    for name in ("MONITORING", "BASELINE", "DATABASE_URL", "TLS_ENABLED", "REFERENCE", "DEV"):
        env.pop(name, None)
    stack("env", env=env)
    text = env_file.read_text()
    ports = {
        "STACK_PORT": free_port(),
        "DEVSERVER_PORT": free_port(),
        "PROMETHEUS_PORT": free_port(),
        "TLS_PORT": free_port(),
    }
    lines = [line for line in text.splitlines() if line.split("=", 1)[0] not in ports]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in ports.items())]) + "\n")
    stack("env", env=env)  # writes the COMPOSE_* lines again, after the settings
    ctx = {
        "version": version,
        "env": env,
        "env_file": env_file,
        "project": project,
        "url": f"http://127.0.0.1:{ports['STACK_PORT']}",
        # Plain compose: no make, no stack.sh, nothing but the env file's own COMPOSE_* lines.
        "plain_env": {**base, "PATH": env["PATH"]},
    }
    yield ctx
    stack("compose", "down", "-v", "--remove-orphans", env={**env, "ALL_PROFILES": "1"},
          check=False, timeout=None)  # fmt: skip


def containers(project: str) -> list[tuple[str, str]]:
    """(service, state) of every container of the project; state is the health where there is
    a healthcheck, else `running` or `exited:<code>`."""
    ids = run(
        "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
        timeout=None,
    ).stdout.split()  # fmt: skip
    out = []
    for cid in ids:
        fmt = (
            '{{index .Config.Labels "com.docker.compose.service"}} '
            '{{if eq .State.Status "exited"}}exited:{{.State.ExitCode}}'
            "{{else if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        )
        line = run("docker", "inspect", "-f", fmt, cid, timeout=None).stdout.strip()
        service, state = line.split(" ", 1)
        out.append((service, state))
    return out


def settled(project: str) -> dict[str, collections.Counter]:
    """Wait until no container is starting, then {service: Counter(states)}."""

    def done() -> bool:
        states = containers(project)
        return bool(states) and all(s in ("healthy", "running", "exited:0") for _, s in states)

    try:
        wait_for(done, SETTLE_S, f"{project} to settle")
    except AssertionError:
        raise AssertionError(f"{project} did not settle: {containers(project)}") from None
    result: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for service, state in containers(project):
        result[service][state] += 1
    return dict(result)


def down(ctx) -> None:
    stack("compose", "down", "--remove-orphans", env={**ctx["env"], "ALL_PROFILES": "1"},
          timeout=None)  # fmt: skip
    assert containers(ctx["project"]) == []


def plain_up(ctx, profiles: str | None = None) -> None:
    """`docker compose up -d` as a user types it: the env file says the rest."""
    env = dict(ctx["plain_env"])
    if profiles is not None:
        env["COMPOSE_PROFILES"] = profiles
    args = ["docker-compose", "--env-file", str(ctx["env_file"]), "up", "-d"]
    if ctx["version"] == "v2":
        args.append("--wait")
    run(*args, env=env, timeout=None)


def make_up(ctx, **settings: str) -> None:
    """What `make up` runs once the images and the env file exist."""
    stack("up", "3", env={**ctx["env"], **settings}, timeout=None)


def served(ctx) -> None:
    r = requests.get(f"{ctx['url']}/healthz", timeout=10)
    assert r.status_code == 200, r.text


def test_plain_compose_starts_what_make_up_starts(setup):
    make_up(setup)
    by_make = settled(setup["project"])
    served(setup)
    down(setup)

    plain_up(setup)
    by_compose = settled(setup["project"])
    served(setup)
    down(setup)

    assert by_compose == by_make
    assert by_make["postgres"] == {"healthy": 1}
    assert by_make["app"] == {"healthy": 3}
    assert by_make["migrate"] == {"exited:0": 1}
    assert "prometheus" not in by_make and "devserver" not in by_make


def test_the_monitoring_profile_by_make_or_by_compose(setup):
    make_up(setup, MONITORING="1")
    by_make = settled(setup["project"])
    down(setup)

    plain_up(setup, profiles="monitoring")
    by_compose = settled(setup["project"])
    down(setup)

    assert by_compose == by_make
    for service in ("prometheus", "postgres-exporter", "nginx-exporter", "postgres"):
        assert service in by_make, f"{service} did not start with MONITORING=1: {by_make}"
    assert by_make["monitor-role"] == {"exited:0": 1}


def test_scale_and_rollout_lose_no_request(setup_v2):
    """`make up` (with `up --wait` on v2), `make scale N=4`, then `make rollout` under paced
    requests: every request answered 200, every replica replaced."""
    setup = setup_v2
    make_up(setup)
    stack("compose", "up", "-d", "--no-deps", "--no-recreate", "--scale", "app=4", "app",
          env=setup["env"], timeout=None)  # fmt: skip
    assert settled(setup["project"])["app"] == {"healthy": 4}
    before = set(stack("compose", "ps", "-q", "app", env=setup["env"]).stdout.split())
    assert len(before) == 4
    served(setup)

    stop = threading.Event()
    statuses: collections.Counter = collections.Counter()

    def paced() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    statuses[s.get(f"{setup['url']}/healthz", timeout=10).status_code] += 1
                except requests.RequestException as error:
                    statuses[type(error).__name__] += 1
                time.sleep(0.05)

    loader = threading.Thread(target=paced, daemon=True)
    loader.start()
    try:
        stack("rollout", env=setup["env"], timeout=None)
    finally:
        stop.set()
        loader.join(timeout=15)
    after = set(stack("compose", "ps", "-q", "app", env=setup["env"]).stdout.split())
    down(setup)

    assert len(after) == 4 and not (after & before), "not every replica was replaced"
    assert statuses[200] > 0
    assert set(statuses) == {200}, f"requests failed during the rollout: {dict(statuses)}"
