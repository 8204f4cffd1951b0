"""The machine a load test runs on: what the report says about it, and whether it was busy."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from loadtest.config import HERE


def machine_info() -> dict[str, str]:
    """Cores, CPU model, memory, versions and the load average, for the report's *Machine*."""
    info = {
        "cores": str(os.cpu_count()),
        "cpu": "?",
        "memory": "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    # Not `import locust`: it monkey-patches the whole process for gevent.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["locust"] = importlib.metadata.version("locust")
    for key, cmd in {
        "docker": ["docker", "version", "--format", "{{.Server.Version}}"],
        "git commit": ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
    }.items():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)  # noqa: S603
            if out.returncode == 0 and out.stdout.strip():
                info[key] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    with contextlib.suppress(OSError):
        info["load average before the run"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def busy_note() -> str:
    """A warning for the report when the machine was already busy before the run, else ''."""
    load1 = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load1 <= 0.5 * cores:
        return ""
    return (
        f"The machine was busy before the run (load average {load1:.1f} on {cores} cores): "
        "other work competed with the servers and the generator, so figures are noisy."
    )
