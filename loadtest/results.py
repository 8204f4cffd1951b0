"""What a load test measured, as the runner collects it; `Results.to_json` is results.json.

The report reads results.json (a rebuilt report and the first one come from the same file), so
its shape is the contract: the keys below, in this order, and an optional field (default None)
only when it is set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

from loadtest.config import Config


class Peak(TypedDict):
    """A container's highest memory (bytes) and CPU (% of one core) during a run."""

    mem: float
    cpu: float


class StepFigures(TypedDict):
    """One step of a step load, its spawning second left out."""

    users: int
    rps: float
    p50: float | None
    p99: float | None
    failures: int


class NameFigures(TypedDict):
    """The window's requests of one Locust request name."""

    rps: float  # successful ones ÷ the window's length
    requests: int
    failures: int
    p50: float | None
    p95: float | None
    p99: float | None


class Knee(TypedDict):
    users: int
    why: str


class Best(TypedDict):
    users: int
    rps: float


class Record:
    """Base of the dataclasses below: written as a JSON object, its None-by-default fields
    only when set."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.default is None and getattr(self, f.name) is None)
        }


@dataclass(kw_only=True)
class Target(Record):
    name: str
    url: str
    primary: bool  # the stack and the built-in server: without both there is nothing to compare
    description: str
    skipped: str | None = None  # why it did not answer the probe
    server: str | None = None  # its Server and Connection headers, when it answered


@dataclass(kw_only=True)
class Measurement(Record):
    """One Locust run: what its window counted, and what the machine spent meanwhile."""

    other_cores: float | None  # busy cores nothing measured explains: other work
    processes: int
    users: int
    locust_exit: int
    rps: float  # successful requests in the window ÷ its length
    requests: int  # in the window
    failures: int
    p50: float | None
    p95: float | None
    p99: float | None
    requests_total: int  # over the whole run, warm-up included
    failures_total: int
    errors: dict[str, int]  # the ten commonest failures
    gen_cores: float  # the Locust processes
    gen_cpu_seconds: float
    machine_busy: float  # share of the whole machine's time
    proxy_cores: float  # docker-proxy
    proxy_cpu_s: float
    engine_cores: float  # dockerd, containerd and the shims
    engine_cpu_s: float
    container_cpu_s: dict[str, float]  # over the whole run, as requests_total
    container_cores: dict[str, float]
    containers: dict[str, Peak]
    log: str
    containers_unread: list[str] | None = None  # gone or recreated during the run
    # The window by Locust request name, when a scenario fires more than one (a socket.io
    # locustfile's events in and out, say).
    by_name: dict[str, NameFigures] | None = None
    error: str | None = None


@dataclass(kw_only=True)
class Run(Measurement):
    """A measured run of the comparison."""

    scenario: str
    target: str
    round: int
    prefix: str
    # Wall-clock (Unix seconds) around the run, Locust's start-up included.
    wall_start: float | None = None
    wall_end: float | None = None
    # PROMETHEUS_URL: per route, the replicas' own p99 (ms) and request count over the run.
    server_p99_ms: dict[str, float | None] | None = None
    server_requests: dict[str, int] | None = None


@dataclass(kw_only=True)
class StepRun(Record):
    """A step load of one scenario and target, and its knee."""

    scenario: str
    target: str
    processes: int
    prefix: str
    per_step: list[StepFigures]
    knee: Knee | None
    best: Best | None
    failures: int
    containers: dict[str, Peak]
    gen_cores: float


@dataclass(kw_only=True)
class SkippedStep(Record):
    scenario: str
    target: str
    skipped: str


@dataclass(kw_only=True)
class ProfileRun(Record):
    """The py-spy pass of one scenario and target: its summary and raw files, or why not."""

    scenario: str
    target: str
    container: str
    error: str | None = None
    summary: str | None = None
    raw: str | None = None
    rps: float


@dataclass(kw_only=True)
class AppCost(Record):
    """A scenario's requests called in-process in an app replica (loadtest/appcall.py): the
    CPU one call costs the app itself, or why it was not measured."""

    container: str | None = None
    calls: int | None = None
    cpu_s: float | None = None  # around the calls alone
    wall_s: float | None = None
    statuses: dict[str, int] | None = None
    ms: float | None = None  # CPU ms per call
    error: str | None = None


@dataclass(kw_only=True)
class Ceiling(Record):
    """The requests/s the generator drives against nginx's own constant, by Locust processes."""

    rps: dict[int, float] | None = None
    url: str | None = None
    reason: str | None = None  # why it was not measured

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.rps is not None:
            out["rps"] = {str(n): v for n, v in self.rps.items()}
        return out


@dataclass(kw_only=True)
class Docker(Record):
    """The compose project's containers whose cgroups are read, and their idle peaks."""

    containers: list[str]
    services: dict[str, str]  # container -> compose service
    reason: str | None = None  # why none is read
    idle: dict[str, Peak] | None = None


@dataclass(kw_only=True)
class Results:
    started: str
    command: str
    config: Config
    machine: dict[str, str]
    targets: list[Target]
    docker: Docker
    ceiling: Ceiling = field(default_factory=Ceiling)
    runs: list[Run] = field(default_factory=list)
    steps: list[StepRun | SkippedStep] = field(default_factory=list)
    profiles: list[ProfileRun] = field(default_factory=list)
    app_cost: dict[str, AppCost] = field(default_factory=dict)  # by scenario
    realtime: dict[str, Any] | None = None  # loadtest/realtime.py's figures
    notes: list[str] = field(default_factory=list)
    finished: str = ""
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "command": self.command,
            "config": asdict(self.config),
            "machine": self.machine,
            "targets": [t.to_json() for t in self.targets],
            "docker": self.docker.to_json(),
            "ceiling": self.ceiling.to_json(),
            "runs": [r.to_json() for r in self.runs],
            "steps": [s.to_json() for s in self.steps],
            "profiles": [p.to_json() for p in self.profiles],
            "app_cost": {k: v.to_json() for k, v in self.app_cost.items()},
            "realtime": self.realtime,
            "notes": self.notes,
            "finished": self.finished,
            "elapsed_s": self.elapsed_s,
        }
