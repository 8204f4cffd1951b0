"""PROFILE=1: where the servers spend their time, from py-spy, in an extra, unmeasured run.

For every scenario and target, one more Locust run with the same settings while py-spy samples
one app replica (or the devserver) for the measured window. `--gil` keeps only samples of the
thread that holds the GIL: in a CPython server that is the work that limits throughput. The raw
collapsed stacks are kept (speedscope and inferno read them) with a summary of the hottest frames.
py-spy is not a project dependency: put it on PATH or point PYSPY at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

from loadtest.accounts import Accounts
from loadtest.cgroups import compose_containers
from loadtest.config import Config
from loadtest.driver import Driver
from loadtest.results import ProfileRun, Results, Target

SERVICE = {"stack": "app", "builtin": "devserver"}


def find_pyspy() -> str:
    return os.environ.get("PYSPY") or shutil.which("py-spy") or ""


def container_pid(project: str, service: str) -> tuple[int, str]:
    """Host pid of the first container of a compose service (its init; py-spy follows children)."""
    names, _ = compose_containers(project, service)
    if not names:
        return 0, ""
    try:
        pid = subprocess.run(  # noqa: S603
            ["docker", "inspect", "-f", "{{.State.Pid}}", names[0]],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout.strip()
        return int(pid), names[0]
    except (subprocess.SubprocessError, OSError, ValueError):
        return 0, ""


def summarize(raw: Path, top: int = 25) -> str:
    """The hottest frames of a py-spy raw (collapsed) profile: self time and inclusive time."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples of the GIL-holding thread", "", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top * 2)]
    return "\n".join(out) + "\n"


class PySpy:
    """Start py-spy on pid after `delay` seconds, for `duration` seconds, in the background."""

    def __init__(self, pyspy: str, pid: int, out: Path, delay: float, duration: float) -> None:
        self.cmd = [
            pyspy,
            "record",
            "--gil",
            "--nonblocking",
            "--subprocesses",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(duration))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        self.out = out
        self.delay = delay
        self.error = ""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        threading.Event().wait(self.delay)
        proc = subprocess.run(self.cmd, capture_output=True, text=True, timeout=600)  # noqa: S603
        if proc.returncode != 0:
            self.error = (proc.stderr or proc.stdout).strip()[-500:]

    def __enter__(self) -> PySpy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=120)


def run_profiles(cfg: Config, driver: Driver, targets: list[Target], results: Results) -> None:
    """One extra, unmeasured run per scenario and target with py-spy on the server process."""
    pyspy = find_pyspy()
    if not pyspy:
        results.notes.append("PROFILE=1 but py-spy was not found (PATH or PYSPY): no profiles.")
        print("  PROFILE=1: py-spy not found (PATH or PYSPY); skipping profiles", flush=True)
        return
    live = [t for t in targets if not t.skipped and t.name in SERVICE]
    with Accounts(cfg, results.notes, driver.log) as accounts:
        for scenario in [s for s in cfg.scenarios if s in cfg.classes]:
            for t in live:
                pid, container = container_pid(cfg.compose_project, SERVICE[t.name])
                if not pid:
                    results.notes.append(f"profile {scenario}/{t.name}: no container found")
                    continue
                env = accounts.env(t) if cfg.needs_accounts(scenario) else {}
                prefix = f"profile-{scenario}-{t.name}"
                raw = driver.out_dir / f"{prefix}.pyspy.txt"
                spy = PySpy(pyspy, pid, raw, cfg.warmup + 0.5, cfg.duration)
                with spy:
                    m = driver.run(
                        cfg.classes[scenario],
                        t.url,
                        prefix,
                        1,
                        cfg.users,
                        cfg.warmup,
                        cfg.duration,
                        env=env,
                    )
                entry = ProfileRun(scenario=scenario, target=t.name, container=container, rps=m.rps)
                if spy.error or not raw.exists():
                    entry.error = spy.error or "py-spy wrote nothing"
                else:
                    top = driver.out_dir / f"{prefix}.top.txt"
                    top.write_text(summarize(raw))
                    entry.summary = top.name
                    entry.raw = raw.name
                results.profiles.append(entry)
                driver.log(
                    f"profile {scenario} · {t.name} ({container}): "
                    + (entry.summary or f"failed: {entry.error}")
                )
