"""The floor under a request's CPU: the app's own cost, measured in-process in an app replica.

Before a scenario's rounds, while the stack is idle between runs, the runner pipes
loadtest/appcall.py into the first `app` container of the compose project (`docker exec -i`):
there, in the replica's image with its database and settings, the scenario's requests are
called straight into the WSGI app. The report sets that CPU per call beside the replicas' CPU
per request; the difference is what hosting adds (the HTTP server, the host's threads and
bookkeeping). Its CPU lands in the replica's cgroup, but between runs, so no run counts it.
"""

from __future__ import annotations

import json
import subprocess

from loadtest.appcall import MARK, PATHS
from loadtest.cgroups import compose_containers
from loadtest.config import HERE, Config
from loadtest.results import AppCost

APPCALL = HERE / "appcall.py"
SERVICE = "app"  # the stack's replicas
SCENARIOS = {*PATHS, "api"}  # appcall.py knows the demo's scenarios, not your locustfile's


def measure_app_cost(cfg: Config, scenario: str) -> AppCost | None:
    """The app's CPU per call of `scenario` in an app replica; None for a scenario appcall.py
    does not know (your own locustfile's, or DOCKER_STATS=0: nothing of the containers is read).
    """
    if cfg.locustfile or scenario not in SCENARIOS or not cfg.docker_stats:
        return None
    names, why_not = compose_containers(cfg.compose_project, SERVICE)
    if not names:
        return AppCost(error=why_not)
    job = {
        "scenario": scenario,
        "warmup": 50,
        "max_calls": 5000,
        "seconds": 1.0 if cfg.smoke else 2.0,
    }
    try:
        proc = subprocess.run(  # noqa: S603 - our own argv, no shell
            ["docker", "exec", "-i", names[0], "python3", "-", json.dumps(job)],  # noqa: S607
            input=APPCALL.read_bytes(),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return AppCost(container=names[0], error=f"docker exec failed: {exc}")
    return parse(
        proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), names[0]
    )


def parse(stdout: str, stderr: str, container: str) -> AppCost:
    """appcall.py's result line (the app may log to stdout too), or why there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        said = (stderr.strip() or stdout.strip()).splitlines()
        return AppCost(container=container, error=said[-1][:300] if said else "no result")
    out = json.loads(lines[-1].removeprefix(MARK))
    return AppCost(
        container=container,
        calls=out["calls"],
        cpu_s=out["cpu_s"],
        wall_s=out["wall_s"],
        statuses=out["statuses"],
        ms=per_call_ms(out["cpu_s"], out["calls"]),
    )


def per_call_ms(cpu_s: float, calls: int) -> float | None:
    """CPU milliseconds per call; None without a call."""
    return round(1000 * cpu_s / calls, 4) if calls else None
