"""What report.md shows, as one typed structure built from results.json and its summary; the
template (templates/report.md.j2) only lays it out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.config import Config
from loadtest.prometheus import SHORT_RUN_S
from loadtest.report.budgets import budgets_table
from loadtest.report.format import DASH, fmt_ms, num
from loadtest.report.summary import BASELINE, Doc, Summary
from loadtest.report.tables import (
    RESULTS_HEADER,
    Table,
    cpu_table,
    generator_table,
    idle_table,
    knee_table,
    loaded_table,
    names_table,
    server_runs,
    server_table,
    step_table,
    table_rows,
)


@dataclass(frozen=True)
class StepLoad:
    knees: Table
    per_step: list[tuple[str, Table]]  # "scenario · target", its steps


@dataclass(frozen=True)
class Containers:
    reason: str | None  # why they were not read; then there are no tables
    idle: Table | None
    loaded: Table | None


@dataclass(frozen=True)
class ServerLatency:
    table: Table  # per scenario and route: the replicas' count and p99, Locust's p99
    shortest_s: float  # the shortest run queried, Locust's start-up included
    short: bool  # under SHORT_RUN_S: one or two scrapes, an approximate figure


@dataclass(frozen=True)
class Profile:
    head: str  # scenario · target (container)
    error: str
    title: str  # the summary's first line
    hottest: list[str]  # its top frames by self time


@dataclass(frozen=True)
class TargetLine:
    name: str
    url: str
    description: str
    state: str  # why it was skipped, or its Server and Connection headers


@dataclass(frozen=True)
class Realtime:
    figures: dict[str, Any]  # loadtest/realtime.py's summary, as results.json holds it
    delivery: Table  # per client kind: delivered ÷ expected, per second, fan-out p50/p95/p99
    cpu: Table | None  # per component: CPU over the event window, per delivered message
    throttling: Table | None  # per replica: the CPU quota's periods and throttled ones
    largest: str  # the component with the most CPU per delivered message, and that figure
    memory: Table  # per replica: connections held, memory before and after, per connection
    json_change: str  # json requests/s with the clients idle, against without them


@dataclass(frozen=True)
class Report:
    """A section is None when there is nothing for it; a table without rows says so."""

    config: Config
    started: str
    command: str
    stack_url: str
    baseline_url: str
    results: Table | None
    names: Table | None  # by Locust request name, when a scenario fires several
    step_load: StepLoad | None
    server: ServerLatency | None
    budgets: Table | None
    cpu: Table | None
    ceiling: str  # requests/s per number of Locust processes; '' when not measured
    ceiling_reason: str
    generator: Table | None
    containers: Containers
    profiles: list[Profile]
    realtime: Realtime | None
    targets: list[TargetLine]
    machine: dict[str, str]
    notes: list[str]
    files: int  # entries in the results directory


def build(out_dir: Path, results: Doc, summary: Summary) -> Report:
    """Every section of the report of the results in `out_dir`."""
    ceiling = results.get("ceiling", {})
    budgets = budgets_table(results, summary)
    return Report(
        config=Config(**results["config"]),
        started=results["started"],
        command=results["command"],
        stack_url=_url(results, "stack"),
        baseline_url=_url(results, BASELINE),
        results=Table(RESULTS_HEADER, table_rows(results, summary)) if summary else None,
        names=names_table(results),
        step_load=_step_load(results),
        server=_server(results, summary),
        budgets=budgets if summary or budgets.rows else None,
        cpu=cpu_table(results, summary) if summary else None,
        ceiling=", ".join(
            f"{p} process{'es' if p != '1' else ''}: {num(v)} requests/s"
            for p, v in sorted(ceiling.get("rps", {}).items())
        ),
        ceiling_reason=ceiling.get("reason", "unknown"),
        generator=generator_table(summary) if summary else None,
        containers=_containers(results),
        profiles=[_profile(out_dir, p) for p in results.get("profiles", [])],
        realtime=_realtime(results.get("realtime")),
        targets=[
            TargetLine(
                t["name"],
                t["url"],
                t["description"],
                (f"skipped: {t['skipped']}" if t.get("skipped") else t.get("server", "")).rstrip(),
            )
            for t in results["targets"]
        ],
        machine=results["machine"],
        notes=results.get("notes", []),
        files=sum(1 for p in out_dir.iterdir() if p.is_file() or p.is_dir()),
    )


def _url(results: Doc, name: str) -> str:
    for t in results["targets"]:
        if t["name"] == name:
            return t["url"]
    return "?"


def _step_load(results: Doc) -> StepLoad | None:
    steps = results.get("steps", [])
    if not steps:
        return None
    per_step = [
        (f"{e['scenario']} · {e['target']}", step_table(e)) for e in steps if not e.get("skipped")
    ]
    return StepLoad(knee_table(results), per_step)


def _server(results: Doc, summary: Summary) -> ServerLatency | None:
    table = server_table(results, summary)
    if table is None:
        return None
    shortest = min(r["wall_end"] - r["wall_start"] for r in server_runs(results))
    return ServerLatency(table, round(shortest, 1), shortest < SHORT_RUN_S)


def _containers(results: Doc) -> Containers:
    docker = results.get("docker", {})
    if not docker.get("containers"):
        return Containers(docker.get("reason", "docker unavailable"), None, None)
    return Containers(None, idle_table(results), loaded_table(results))


def _profile(out_dir: Path, p: Doc) -> Profile:
    head = f"{p['scenario']} · {p['target']} ({p.get('container', '?')})"
    if p.get("error"):
        return Profile(head, p["error"], "", [])
    text = (out_dir / p["summary"]).read_text().splitlines()
    own = text[text.index("self:") + 1 : text.index("self:") + 11] if "self:" in text else []
    return Profile(head, "", text[0] if text else "", own)


def _realtime(r: dict[str, Any] | None) -> Realtime | None:
    if not r:
        return None
    rows = []
    for kind, k in r["by_kind"].items():
        share = k["delivered"] / max(1, k["expected"])
        rows.append(
            [
                kind,
                f"{k['delivered']:,} ÷ {k['expected']:,} ({share:.2%})",
                num(k.get("per_s")),
                fmt_ms(k["p50_ms"]),
                fmt_ms(k.get("p95_ms")),
                fmt_ms(k["p99_ms"]),
            ]
        )
    rows.append(["Flask's built-in server", "no websocket: not measured", DASH, DASH, DASH, DASH])
    delivery = Table(
        [
            "clients",
            "delivered ÷ expected",
            "deliveries/s",
            "fan-out p50 ms",
            "p95 ms",
            "p99 ms",
        ],
        rows,
    )
    window = r.get("window") or {}
    cpu_s, per_message = window.get("cpu_s", {}), r.get("us_per_message", {})
    span_s = window.get("window_s") or 0
    cpu = (
        Table(
            ["component", "CPU s", "cores", "µs per delivered message"],
            [
                [
                    name,
                    f"{seconds:,.2f}",
                    f"{seconds / span_s:.2f}" if span_s else DASH,
                    num(per_message.get(name), 1),
                ]
                for name, seconds in cpu_s.items()
            ]
            + [
                [
                    "server (replicas, nginx, Postgres)",
                    f"{sum(cpu_s.get(k, 0.0) for k in ('replicas', 'nginx', 'postgres')):,.2f}",
                    DASH,
                    num(r.get("server_us_per_message"), 1),
                ]
            ],
        )
        if cpu_s
        else None
    )
    throttle = window.get("throttling", {})
    throttling = (
        Table(
            ["replica", "quota periods", "throttled", "throttled s"],
            [
                [host, f"{t['periods']:,}", f"{t['throttled']:,}", f"{t['throttled_s']:g}"]
                for host, t in sorted(throttle.items())
            ],
        )
        if throttle
        else None
    )
    top = r.get("largest")
    largest = f"{top}, {num(per_message.get(top), 1)} µs per delivered message" if top else ""
    memory = Table(
        ["replica", "connections", "memory before MiB", "with clients MiB", "KiB per connection"],
        [
            [
                host,
                str(m["connections"]),
                f"{m['before_mib']:g}",
                f"{m['after_mib']:g}",
                fmt_ms(m["kib_per_connection"]),
            ]
            for host, m in sorted(r["memory"].items())
        ],
    )
    before, after = r.get("json_rps_without"), r.get("json_rps_with")
    change = (
        f"{after:,.0f} requests/s with the clients connected and idle, {before:,.0f} without "
        f"(the mean of a run before and a run after): {after / before - 1:+.1%}"
        if before and after
        else "not measured"
    )
    return Realtime(r, delivery, cpu, throttling, largest, memory, change)
