"""CPU outside the containers during a run: the load generator's processes, Docker's port
proxies and engine, and the whole machine's busy time, from psutil."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil


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
        # What each process had spent when start() first saw it: only CPU from then on counts
        # (a long-lived root, such as the load test's own process, brings minutes of it).
        self._base: dict[int, float] = {}
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
        self._base = dict(self._cpu)
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
        """CPU seconds since start(): a process started later counts from its start."""
        return sum(seconds - self._base.get(pid, 0.0) for pid, seconds in self._cpu.items())

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
