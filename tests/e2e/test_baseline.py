"""Production by default: the built-in-server baseline runs only when asked or when comparing.

`make up` (stack.sh up) leaves the devserver out and stops one that runs; `make loadtest` starts
it when it is missing, says so, and stops it again; BASELINE=1 keeps it. The test stack runs
with the baseline on (other tests use BASELINE_URL), so every test here puts it back.
"""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.support import monitoring_on, run, stack


def published_services() -> set[str]:
    """The compose services of the stack under test that publish a port on the host."""
    label = f"label=com.docker.compose.project={os.environ['PROJECT']}"
    ids = run("docker", "ps", "-q", "--filter", label).stdout.split()
    services = set()
    for c in json.loads(run("docker", "inspect", *ids).stdout):
        if any(c["NetworkSettings"]["Ports"].get(p) for p in c["NetworkSettings"]["Ports"]):
            services.add(c["Config"]["Labels"]["com.docker.compose.service"])
    return services


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def baseline_restored():
    """Whatever a test does to the devserver, the test stack has it running again afterwards."""
    yield
    if stack("baseline", "running", check=False).returncode != 0:
        stack("baseline", "up", timeout=None)


def test_up_without_baseline_runs_no_development_server(stack_url, baseline_url, baseline_restored):
    assert answers(baseline_url), "the test stack runs with the baseline"
    monitoring = {"prometheus"} if monitoring_on() else set()  # published with the profile
    env = {**os.environ, "BASELINE": "0"}
    out = stack("up", "3", env=env, timeout=None).stdout
    assert "stopping the built-in-server baseline" in out, out
    assert stack("baseline", "running", env=env, check=False).returncode == 1
    assert published_services() == {"nginx"} | monitoring
    assert not answers(baseline_url)
    assert answers(stack_url)
    # The URLs printed after `make up` no longer offer the baseline.
    assert "baseline" not in stack("urls", env=env).stdout

    out = stack("up", "3", env={**os.environ, "BASELINE": "1"}, timeout=None).stdout
    assert "with the built-in-server baseline" in out, out
    assert published_services() == {"nginx", "devserver"} | monitoring
    assert answers(baseline_url)


def test_loadtest_starts_the_missing_baseline_and_stops_it_again(
    stack_url, baseline_url, baseline_restored, tmp_path
):
    stack("baseline", "down")
    assert not answers(baseline_url)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("STACK_URL", "BASELINE_URL", "SCENARIOS", "ROUNDS", "BASELINE", "LOCUSTFILE")
    }
    env |= {"SMOKE": "1", "SCENARIOS": "plaintext", "RESULTS_DIR": str(tmp_path)}
    proc = run("make", "--no-print-directory", "loadtest", env=env, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "devserver) is not running: starting it for the comparison" in out
    assert "stopping the devserver again" in out
    (results,) = tmp_path.glob("*/results.json")
    runs = json.loads(results.read_text())["runs"]
    assert {(r["target"], r["failures_total"]) for r in runs} == {("stack", 0), ("builtin", 0)}
    assert stack("baseline", "running", check=False).returncode == 1
