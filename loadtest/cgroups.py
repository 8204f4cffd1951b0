"""Each container's memory and CPU during a run, read from the kernel's cgroup files.

The containers are the compose project's, found with `docker ps` by label; their cgroups with
one `docker inspect` before each run. `docker stats` is never run: each call cost dockerd real
CPU in the middle of the measurement.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def compose_containers(project: str, service: str = "") -> tuple[list[str], str]:
    """Running containers of the compose project (or of one service), and why none if so.

    Matched by the label both Compose v1 and v2 set, not by name: `flaskstack-test_app_1`
    starts with `flaskstack-` too.
    """
    if not shutil.which("docker"):
        return [], "docker is not installed"
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [  # noqa: S607 - docker from PATH
                "docker",
                "ps",
                "--filter",
                f"label=com.docker.compose.project={project}",
                *(["--filter", f"label=com.docker.compose.service={service}"] if service else []),
                "--format",
                "{{.Names}}",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return [], f"docker ps failed: {exc}"
    names = sorted(out.split())
    if not names:
        return [], f"no running container of compose project {project!r}"
    return names, ""


def inspect_containers(names: list[str]) -> dict[str, tuple[str, str]]:
    """Full container id and compose service by name."""
    if not names:
        return {}
    fmt = '{{.Name}} {{.Id}} {{index .Config.Labels "com.docker.compose.service"}}'
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["docker", "inspect", "--format", fmt, *names],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    found = {}
    for line in out.splitlines():
        parts = line.strip().lstrip("/").split()
        if len(parts) >= 2:
            found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


# --- containers: the kernel's cgroup accounting --------------------------------------------


def _scopes(base: Path, cid: str) -> tuple[Path, Path]:
    """A container's cgroup directory under Docker's cgroupfs driver and its systemd driver."""
    return base / "docker" / cid, base / "system.slice" / f"docker-{cid}.scope"


def _first_file(root: Path, controllers: tuple[str, ...], cid: str, name: str) -> Path | None:
    """The first file `name` in a container's scope under any of these v1 controllers."""
    return next(
        (
            d / name
            for controller in controllers
            for d in _scopes(root / controller, cid)
            if (d / name).is_file()
        ),
        None,
    )


def _stat(text: str, key: str) -> int | None:
    """The value of `key` in a `memory.stat` or `cpu.stat` file ("key value" per line)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


@dataclass(frozen=True)
class Cgroup:
    """Where the kernel accounts one container's memory and CPU.

    cgroup v1 has a tree per controller (`memory/docker/<id>/`, `cpuacct/docker/<id>/`);
    v2 one tree (`docker/<id>/` or `system.slice/docker-<id>.scope/`) with every file.
    """

    memory: Path | None  # the directory holding the memory files
    cpu: Path | None  # v1 cpuacct.usage (ns), v2 cpu.stat (usage_usec)
    v2: bool
    # cpu.stat of the CPU controller: the quota's periods and how many of them throttled
    # (v1 `cpu/docker/<id>/cpu.stat`, v2 the same file as `cpu`).
    throttle: Path | None = None

    @classmethod
    def find(cls, cid: str, root: Path = CGROUP_ROOT) -> Cgroup | None:
        cpu = _first_file(root, ("cpuacct", "cpu,cpuacct"), cid, "cpuacct.usage")
        memory = next(
            (d for d in _scopes(root / "memory", cid) if (d / "memory.usage_in_bytes").is_file()),
            None,
        )
        throttle = _first_file(root, ("cpu", "cpu,cpuacct"), cid, "cpu.stat")
        if cpu or memory:
            return cls(memory, cpu, v2=False, throttle=throttle)
        for d in _scopes(root, cid):
            if (d / "cpu.stat").is_file():
                return cls(d, d / "cpu.stat", v2=True, throttle=d / "cpu.stat")
        return None

    def memory_bytes(self) -> float | None:
        """Memory in use as `docker stats` counts it: usage less the inactive file cache
        (v1 `usage_in_bytes - total_inactive_file`, v2 `memory.current - inactive_file`)."""
        if self.memory is None:
            return None
        usage_file, inactive_key = (
            ("memory.current", "inactive_file")
            if self.v2
            else ("memory.usage_in_bytes", "total_inactive_file")
        )
        try:
            usage = int((self.memory / usage_file).read_text())
            inactive = _stat((self.memory / "memory.stat").read_text(), inactive_key)
        except (OSError, ValueError):
            return None
        if inactive is not None and inactive < usage:
            return float(usage - inactive)
        return float(usage)

    def cpu_seconds(self) -> float | None:
        """CPU time the container has used since it started."""
        if self.cpu is None:
            return None
        try:
            text = self.cpu.read_text()
            if not self.v2:
                return int(text) / 1e9
            usec = _stat(text, "usage_usec")
        except (OSError, ValueError):
            return None
        return None if usec is None else usec / 1e6

    def throttling(self) -> Throttling | None:
        """The CPU quota's counters so far: periods, throttled periods, seconds held back."""
        if self.throttle is None:
            return None
        try:
            text = self.throttle.read_text()
        except OSError:
            return None
        periods, throttled = _stat(text, "nr_periods"), _stat(text, "nr_throttled")
        # v1 counts the time held back in ns (throttled_time), v2 in µs (throttled_usec).
        ns, usec = _stat(text, "throttled_time"), _stat(text, "throttled_usec")
        held = ns / 1e9 if ns is not None else (usec / 1e6 if usec is not None else None)
        if periods is None or throttled is None or held is None:
            return None
        return Throttling(periods, throttled, held)


@dataclass(frozen=True)
class Throttling:
    """A container's CPU quota counters (cpu.stat); subtract two readings for a window's."""

    periods: int  # quota periods (100 ms each by default) in which the container ran
    throttled: int  # periods in which it used its quota up and had to wait
    seconds: float  # time it spent waiting for the next period

    def __sub__(self, other: Throttling) -> Throttling:
        return Throttling(
            self.periods - other.periods,
            self.throttled - other.throttled,
            self.seconds - other.seconds,
        )


class Cgroups:
    """The cgroups of a set of containers, found once (`docker inspect`) when a run is set up."""

    def __init__(self, containers: dict[str, tuple[str, str]], root: Path = CGROUP_ROOT) -> None:
        """`containers`: {name: (full id, compose service)}, as `inspect_containers` gives."""
        self.services = {name: service for name, (_cid, service) in containers.items()}
        self.groups: dict[str, Cgroup] = {}
        for name, (cid, _service) in containers.items():
            found = Cgroup.find(cid, root)
            if found:
                self.groups[name] = found

    @classmethod
    def of(cls, names: list[str]) -> Cgroups:
        return cls(inspect_containers(names))

    def cpu_seconds(self) -> dict[str, float]:
        """Each container's CPU time so far: subtract two readings for a run's exact CPU."""
        read = {name: group.cpu_seconds() for name, group in self.groups.items()}
        return {name: v for name, v in read.items() if v is not None}

    def throttling(self) -> dict[str, Throttling]:
        """Each container's CPU quota counters so far (none for a container without a quota
        file)."""
        read = {name: group.throttling() for name, group in self.groups.items()}
        return {name: v for name, v in read.items() if v is not None}

    def memory(self) -> dict[str, float]:
        """Each container's memory in use now, in bytes."""
        read = {name: group.memory_bytes() for name, group in self.groups.items()}
        return {name: v for name, v in read.items() if v is not None}


class ContainerSampler:
    """Peak memory and CPU per container, read from the cgroup files in a thread while a run lasts.

    Every `interval` seconds: the memory in use, and the CPU since the previous reading in percent
    of one core, both as `docker stats` shows them. A reading is a few small file reads, where one
    `docker stats --no-stream` call cost dockerd and the CLI real CPU during the run.
    """

    def __init__(self, cgroups: Cgroups, interval: float = 0.5) -> None:
        self.cgroups = cgroups
        self.interval = interval
        self.peaks: dict[str, dict[str, float]] = {}
        self.samples = 0
        self._last: tuple[float, dict[str, float]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        """Read every container once and raise its peaks."""
        now = time.monotonic()
        cpu = self.cgroups.cpu_seconds()
        for name, used in self.cgroups.memory().items():
            peak = self.peaks.setdefault(name, {"mem": 0.0, "cpu": 0.0})
            peak["mem"] = max(peak["mem"], used)
        if self._last and now > self._last[0]:
            then, cpu0 = self._last
            for name in cpu.keys() & cpu0.keys():
                peak = self.peaks.setdefault(name, {"mem": 0.0, "cpu": 0.0})
                peak["cpu"] = max(peak["cpu"], 100 * (cpu[name] - cpu0[name]) / (now - then))
        self._last = (now, cpu)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ContainerSampler:
        if self.cgroups.groups:
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.sample()
