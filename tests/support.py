"""Helpers the test folders share, each written once: commands, free ports, waits, figures.

Callers differ in how long a command may take and whether a failure is theirs to judge, so those
are parameters: `run` captures output as text from the repository root and, with `check`, fails
the test naming the command, its exit status and its output.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "deploy" / "scripts" / "stack.sh"
FIGURES = ROOT / "build" / "e2e-figures.txt"


def run(
    *args: str,
    check: bool = True,
    timeout: float | None = 120,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in ROOT, output captured; timeout=None lets it take as long as it takes."""
    result = subprocess.run(
        list(args),
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port nothing listens on at host ("" for every address, as Swarm publishes)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(probe: Callable[[], object], timeout: float, what: str, poll: float = 0.5) -> float:
    """Call probe every `poll` s until it returns true; return the wall-clock time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.time()
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stack(
    *args: str,
    check: bool = True,
    timeout: float | None = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run deploy/scripts/stack.sh for the stack PROJECT / ENV_FILE name (from make, or env)."""
    return run(str(STACK), *args, check=check, timeout=timeout, env=env)


def monitoring_on() -> bool:
    """Whether the stack under test runs the monitoring profile (MONITORING=1: Prometheus is
    published too)."""
    return stack("get", "MONITORING", "0").stdout.strip() == "1"


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a compose command against the stack under test, with no time limit."""
    return stack("compose", *args, check=check, timeout=None)


def wait_healthy(timeout: float = 120) -> None:
    """Wait until every container of the stack under test is healthy (stack.sh wait)."""
    stack("wait", str(int(timeout)))


def figure(name: str, text: str) -> None:
    """Print a measured figure and keep it in build/e2e-figures.txt (make prints that file)."""
    line = f"FIGURE {name}: {text}"
    print(f"\n{line}", flush=True)
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
