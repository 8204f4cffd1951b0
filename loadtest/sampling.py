"""What the machine spends during a run: container stats and the load generator's own CPU."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

_UNITS = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> float:
    """Bytes from a docker stats size such as "12.5MiB" (0.0 when unreadable)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]+)\s*", text)
    if not m:
        return 0.0
    return float(m.group(1)) * _UNITS.get(m.group(2).lower(), 1)


def parse_percent(text: str) -> float:
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        return 0.0


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


def docker_stats_once(names: list[str]) -> dict[str, dict[str, float]]:
    """One `docker stats --no-stream` sample: {name: {mem: bytes, cpu: percent}}."""
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["docker", "stats", "--no-stream", "--format", "{{json .}}", *names],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    sample = {}
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        name = row.get("Name", "")
        if name in names:
            sample[name] = {
                "mem": parse_size(row.get("MemUsage", "").split("/")[0]),
                "cpu": parse_percent(row.get("CPUPerc", "")),
            }
    return sample


class DockerSampler:
    """Peak memory and CPU per container, sampled in a thread while a run lasts.

    One `docker stats --no-stream` call takes about 2 s; leaving does not wait for the call in
    flight (its sample is dropped), so sampling adds no time to a run.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.peaks: dict[str, dict[str, float]] = {}
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = docker_stats_once(self.names)
            with self._lock:
                if self._stop.is_set():
                    return
                if sample:
                    self.samples += 1
                for name, vals in sample.items():
                    peak = self.peaks.setdefault(name, {"mem": 0.0, "cpu": 0.0})
                    peak["mem"] = max(peak["mem"], vals["mem"])
                    peak["cpu"] = max(peak["cpu"], vals["cpu"])

    def __enter__(self) -> DockerSampler:
        if self.names:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop.set()
            self.peaks = {k: dict(v) for k, v in self.peaks.items()}


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


def _cgroup_cpu_file(cid: str) -> tuple[Path, str] | None:
    """The file holding a container's total CPU time: cgroup v1 (ns) or v2 (usec)."""
    root = Path("/sys/fs/cgroup")
    v1 = [
        root / "cpuacct" / "docker" / cid / "cpuacct.usage",
        root / "cpu,cpuacct" / "docker" / cid / "cpuacct.usage",
        root / "cpuacct" / "system.slice" / f"docker-{cid}.scope" / "cpuacct.usage",
        root / "cpu,cpuacct" / "system.slice" / f"docker-{cid}.scope" / "cpuacct.usage",
    ]
    v2 = [
        root / "system.slice" / f"docker-{cid}.scope" / "cpu.stat",
        root / "docker" / cid / "cpu.stat",
    ]
    for path in v1:
        if path.is_file():
            return path, "v1"
    for path in v2:
        if path.is_file():
            return path, "v2"
    return None


class CgroupCPU:
    """Exact CPU seconds per container over a run, read from the kernel's cgroup accounting."""

    def __init__(self, names: list[str]) -> None:
        self.files = {}
        info = inspect_containers(names)
        self.services = {name: service for name, (_cid, service) in info.items()}
        for name, (cid, _service) in info.items():
            found = _cgroup_cpu_file(cid)
            if found:
                self.files[name] = found

    def snapshot(self) -> dict[str, float]:
        out = {}
        for name, (path, kind) in self.files.items():
            try:
                text = path.read_text()
            except OSError:
                continue
            if kind == "v1":
                out[name] = int(text.strip()) / 1e9
            else:
                for line in text.splitlines():
                    if line.startswith("usage_usec "):
                        out[name] = int(line.split()[1]) / 1e6
        return out


def docker_proxies() -> list[psutil.Process]:
    """Docker's userland proxies: every connection to a port published on 127.0.0.1 goes
    through one (a Go process per port), so it is part of the measured path and takes CPU."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "docker-proxy":
            found.append(proc)
    return found


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class ProcessTreeSampler:
    """CPU seconds used by a process and all its descendants (the Locust master and workers)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._proxies = docker_proxies()
        self._proxy0 = cpu_seconds(self._proxies)
        self.wall = 0.0
        self.machine_busy = 0.0
        self.proxy_cores = 0.0

    def _poll(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            self._cpu[proc.pid] = max(self._cpu.get(proc.pid, 0.0), t.user + t.system)

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
        if self.wall > 0:
            self.proxy_cores = (cpu_seconds(self._proxies) - self._proxy0) / self.wall

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    @property
    def cores(self) -> float:
        """Mean number of cores the generator kept busy over the run."""
        return self.cpu_seconds / self.wall if self.wall > 0 else 0.0
