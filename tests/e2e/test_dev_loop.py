"""The development override (deploy/compose/dev.yml): the whole stack on a checkout, each
replica's host restarted when a Python file changes; refused in production mode.

The checkout here is a temporary copy of the app and the host (DEV_SOURCE), so the test can
change a view without touching the repository. Its stack is a small one of its own (project
<PROJECT>-dev, one replica, as `make dev-stack` runs it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, figure, free_port, run, stack

# What the app and its host need at run time, as the image copies it.
SOURCE = ("app", "deploy/tornado", "deploy/scripts/devreload.py", "migrations", "data")


@pytest.fixture(scope="module")
def checkout():
    """A copy of the source that the containers' uid (10001) can read."""
    (ROOT / "build").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dev-src-", dir=ROOT / "build"))
    try:
        for part in SOURCE:
            src, dst = ROOT / part, root / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stack_env(tmp_path_factory, project: str, checkout: Path, app_env: str) -> dict[str, str]:
    """The environment that names a dev stack of its own: project, env file, ports, source."""
    overrides = {
        "STACK_PORT": str(free_port()),
        "TLS_ENABLED": "0",
        "BASELINE": "0",
        "MONITORING": "0",  # the test stack's Prometheus holds its port
    }
    base = (ROOT / os.environ.get("ENV_FILE", ".env")).read_text().splitlines()
    lines = [line for line in base if line.split("=", 1)[0] not in overrides]
    env_file = tmp_path_factory.mktemp(project) / "dev.env"
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    return {
        **os.environ,
        "PROJECT": project,
        "ENV_FILE": str(env_file),
        "DEV": "1",
        "APP_ENV": app_env,
        "DEV_SOURCE": str(checkout),
        "STACK_URL": f"http://127.0.0.1:{overrides['STACK_PORT']}",
        # The shell's value wins over the env file's, and `make test-e2e` runs with the baseline
        # on for the test stack: this stack has none (its devserver port would clash).
        "BASELINE": "0",
    }


def project_containers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    return run("docker", "ps", "-aq", "--filter", label).stdout.split()


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory, checkout):
    env = stack_env(tmp_path_factory, f"{os.environ['PROJECT']}-dev", checkout, "development")
    try:
        stack("up", "1", env=env, timeout=None)
        yield env
    finally:
        stack("compose", "down", "-v", "--remove-orphans", env=env, check=False, timeout=None)


def test_the_overlay_is_refused_in_production_mode(tmp_path_factory, checkout):
    project = f"{os.environ['PROJECT']}-devprod"
    env = stack_env(tmp_path_factory, project, checkout, "production")
    proc = stack("up", "1", env=env, check=False, timeout=None)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refused: the development overlay" in proc.stderr
    assert project_containers(project) == []
    # By hand, past make: the overlay's own command refuses to start the host.
    image = os.environ.get("APP_IMAGE", "flaskstack/app:local")
    proc = run(
        "docker", "run", "--rm", "--read-only", "--cap-drop", "ALL",
        "-v", f"{checkout}:/src:ro", "-e", "APP_ENV=production", image,
        "python3", "/src/deploy/scripts/devreload.py", "python3", "-c", "print('started')",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refused" in proc.stderr and "started" not in proc.stdout


def test_a_changed_view_is_served_within_seconds(dev_stack, checkout):
    url = dev_stack["STACK_URL"]
    assert requests.get(f"{url}/bench/plaintext", timeout=5).text == "Hello, World!"
    (replica,) = stack("compose", "ps", "-q", "app", env=dev_stack).stdout.split()

    view = checkout / "app" / "bench.py"
    view.write_text(view.read_text().replace('b"Hello, World!"', 'b"Hello, dev loop!"'))
    changed = time.monotonic()
    seen = None
    while seen is None and time.monotonic() - changed < 60:
        try:
            r = requests.get(f"{url}/bench/plaintext", timeout=5)
            if r.status_code == 200 and r.text == "Hello, dev loop!":
                seen = time.monotonic() - changed
        except requests.RequestException:
            pass  # the host is restarting
        time.sleep(0.1)
    logs = run("docker", "logs", "--tail", "20", replica, check=False)
    assert seen is not None, logs.stdout + logs.stderr
    figure("dev loop", f"a changed view answered through nginx {seen:.1f} s after the write")
    # The host restarted inside the same container: no container was replaced.
    assert stack("compose", "ps", "-q", "app", env=dev_stack).stdout.split() == [replica]
    assert "changed: restarting" in logs.stderr
