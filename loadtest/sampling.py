"""What the machine spends during a run: each container's memory and CPU from its cgroup, the
CPU of Docker's engine and port proxies, and the load generator's own CPU."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

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

    @classmethod
    def find(cls, cid: str, root: Path = CGROUP_ROOT) -> Cgroup | None:
        cpu = next(
            (
                d / "cpuacct.usage"
                for controller in ("cpuacct", "cpu,cpuacct")
                for d in _scopes(root / controller, cid)
                if (d / "cpuacct.usage").is_file()
            ),
            None,
        )
        memory = next(
            (d for d in _scopes(root / "memory", cid) if (d / "memory.usage_in_bytes").is_file()),
            None,
        )
        if cpu or memory:
            return cls(memory, cpu, v2=False)
        for d in _scopes(root, cid):
            if (d / "cpu.stat").is_file():
                return cls(d, d / "cpu.stat", v2=True)
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


# --- processes outside the containers ------------------------------------------------------


def _processes(wanted: Callable[[str], bool]) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if wanted(p.info["name"] or "")]


def docker_proxies() -> list[psutil.Process]:
    """Docker's userland proxies: every connection to a port published on 127.0.0.1 goes
    through one (a Go process per port), so it is part of the measured path and takes CPU."""
    return _processes(lambda name: name == "docker-proxy")


def docker_engine() -> list[psutil.Process]:
    """The Docker engine: dockerd, containerd and the containerd shims (one per container).

    Every line a container writes to stdout passes through its shim and dockerd's log driver,
    and every health check is an exec through all three, so their CPU rises with the load.
    """
    return _processes(
        lambda name: name in {"dockerd", "containerd"} or name.startswith("containerd-shim")
    )


def _cpu_by_pid(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = t.user + t.system
    return out


class _ProcessSet:
    """CPU seconds a fixed set of processes spends from now on (one that exits counts nothing)."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs
        self._start = _cpu_by_pid(procs)

    def spent(self) -> float:
        now = _cpu_by_pid(self.procs)
        return sum(now[pid] - self._start[pid] for pid in now.keys() & self._start.keys())


class ProcessTreeSampler:
    """CPU seconds used by a process and all its descendants (the Locust master and workers),
    and meanwhile by Docker's proxies and engine and by the whole machine."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._proxies = _ProcessSet(docker_proxies())
        self._engine = _ProcessSet(docker_engine())
        self.wall = 0.0
        self.machine_busy = 0.0
        self.proxy_cpu_seconds = 0.0
        self.engine_cpu_seconds = 0.0

    def _poll(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for pid, seconds in _cpu_by_pid(procs).items():
            self._cpu[pid] = max(self._cpu.get(pid, 0.0), seconds)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def start(self) -> None:
        self._poll()
        self._thread.start()

    def stop(self) -> None:
        self._poll()
        self._stop.set()
        self._thread.join()
        self.wall = time.monotonic() - self._t0
        sys1 = psutil.cpu_times()
        busy = lambda t: t.user + t.nice + t.system + t.irq + t.softirq + t.steal  # noqa: E731
        total = sum(sys1) - sum(self._sys0)
        self.machine_busy = (busy(sys1) - busy(self._sys0)) / total if total > 0 else 0.0
        self.proxy_cpu_seconds = self._proxies.spent()
        self.engine_cpu_seconds = self._engine.spent()

    def _cores(self, seconds: float) -> float:
        return seconds / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    @property
    def cores(self) -> float:
        """Mean number of cores the generator kept busy over the run."""
        return self._cores(self.cpu_seconds)

    @property
    def proxy_cores(self) -> float:
        return self._cores(self.proxy_cpu_seconds)

    @property
    def engine_cores(self) -> float:
        return self._cores(self.engine_cpu_seconds)
