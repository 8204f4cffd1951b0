"""The report's tables, as rows of formatted cells, from results.json and its summary."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from loadtest.prometheus import STACK
from loadtest.report.format import DASH, TIMES, fmt_ms, mib, num, short, span
from loadtest.report.summary import (
    BASELINE,
    COMPONENTS,
    NOISY_CORES,
    OPTIONAL,
    Doc,
    Summary,
    loaded,
)
from loadtest.stats import median_min_max


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


APP_COLUMN = "app in-process"
OVERHEAD_COLUMN = "hosting overhead"
RESULTS_HEADER = [
    "scenario",
    "target",
    "requests/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "failures",
    "÷ built-in",
    "note",
]


def table_rows(results: Doc, summary: Summary) -> list[list[str]]:
    """The results table: per scenario and target, the medians, the ratio and the marks."""
    rows = []
    for scenario, per_target in summary.items():
        for target in results["targets"]:
            s = per_target.get(target["name"])
            if s is None:
                continue
            if "skipped" in s:
                rows.append([scenario, target["name"], "skipped", "", "", "", "", "", s["skipped"]])
                continue
            flags = []
            if s["generator_limited_rounds"]:
                rounds = ",".join(map(str, s["generator_limited_rounds"]))
                flags.append(f"⚠ generator-limited (round {rounds})")
            if s.get("other_cores") and s["other_cores"][0] > NOISY_CORES:
                flags.append(f"noisy: other work took {s['other_cores'][0]:.1f} cores")
            if s["containers_unread"]:
                project = results["config"]["compose_project"]
                gone = ", ".join(short(n, project) for n in s["containers_unread"])
                flags.append(f"CPU not read: {gone} (gone or recreated during the run)")
            rows.append(
                [
                    scenario,
                    target["name"],
                    span(s["rps"]),
                    fmt_ms(s["p50"] and s["p50"][0]),
                    fmt_ms(s["p95"] and s["p95"][0]),
                    fmt_ms(s["p99"] and s["p99"][0]),
                    f"{s['failures']:,}",
                    DASH if target["name"] == BASELINE else span(s["ratio"], 2, TIMES),
                    "; ".join(flags),
                ]
            )
    return rows


def names_table(results: Doc) -> Table | None:
    """Per scenario, target and Locust request name, when a scenario fired more than one: the
    window's requests/s and percentiles, median over rounds, and its failures."""
    groups: dict[tuple[str, str, str], list[Doc]] = {}
    for run in results.get("runs", []):
        for name, figures in (run.get("by_name") or {}).items():
            groups.setdefault((run["scenario"], run["target"], name), []).append(figures)
    if not groups:
        return None
    order = {t["name"]: i for i, t in enumerate(results["targets"])}
    rows = []
    for (scenario, target, name), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][2])
    ):

        def med(key: str, runs: list[Doc] = runs) -> str:
            mmm = median_min_max(r[key] for r in runs)
            return fmt_ms(mmm and mmm[0])

        rows.append(
            [
                scenario,
                target,
                name,
                span(median_min_max(r["rps"] for r in runs), 1),
                med("p50"),
                med("p95"),
                med("p99"),
                f"{sum(r['failures'] for r in runs):,}",
            ]
        )
    header = ["scenario", "target", "name", "per s", "p50 ms", "p95 ms", "p99 ms", "failures"]
    return Table(header, rows)


def cpu_table(results: Doc, summary: Summary) -> Table:
    """Where one request's CPU goes, per component, for every scenario and target; an OPTIONAL
    component's column only when some run measured it."""
    measured = [
        s
        for per_target in summary.values()
        for s in per_target.values()
        if "skipped" not in s and s["cpu_ms"]
    ]
    shown = [k for k in COMPONENTS if k not in OPTIONAL or any(k in s["cpu_ms"] for s in measured)]
    # The app's own cost and what hosting adds to it, beside the Python server they split.
    floor = any(s.get("app_ms") is not None for s in measured)
    header = ["scenario", "target"]
    for k in shown:
        header.append(COMPONENTS[k])
        if k == "server" and floor:
            header += [APP_COLUMN, OVERHEAD_COLUMN]
    rows = []
    for scenario, per_target in summary.items():
        for target in results["targets"]:
            s = per_target.get(target["name"])
            if not s or "skipped" in s or not s["cpu_ms"]:
                continue
            row = [scenario, target["name"]]
            for k in shown:
                row.append(span(s["cpu_ms"].get(k), 2))
                if k == "server" and floor:
                    row += [num(s.get("app_ms"), 2), span(s.get("overhead_ms"), 2)]
            rows.append(row)
    return Table(header, rows)


def server_runs(results: Doc) -> list[Doc]:
    """The stack's runs with Prometheus's per-route figures (PROMETHEUS_URL)."""
    return [r for r in results["runs"] if r["target"] == STACK and r.get("server_requests")]


def server_table(results: Doc, summary: Summary) -> Table | None:
    """Per scenario and route: the replicas' own request count and p99 over the stack's runs,
    beside Locust's p99 of the scenario on the stack; None when no run has them."""
    rows = []
    for scenario in results["config"]["scenarios"]:
        mine = [r for r in server_runs(results) if r["scenario"] == scenario]
        client = summary.get(scenario, {}).get(STACK, {})
        p99 = client.get("p99")
        for route in sorted({route for r in mine for route in r["server_requests"]}):
            rows.append(
                [
                    scenario,
                    route,
                    span(median_min_max([r["server_requests"].get(route) for r in mine])),
                    span(median_min_max([r["server_p99_ms"].get(route) for r in mine]), 1),
                    fmt_ms(p99 and p99[0]),
                ]
            )
    if not rows:
        return None
    header = ["scenario", "route", "requests per run", "server p99 ms", "Locust p99 ms"]
    return Table(header, rows)


def generator_table(summary: Summary) -> Table:
    """Where the machine's cores went during the runs, per scenario and target."""
    rows = []
    for scenario, per_target in summary.items():
        for name, s in per_target.items():
            if "skipped" in s:
                continue
            rows.append(
                [
                    scenario,
                    name,
                    ",".join(map(str, s["processes"])),
                    span(s["gen_cores"], 2),
                    span(s["proxy_cores"], 2),
                    span(s["engine_cores"], 2),
                    span(s["server_cores"], 2),
                    span(s["other_cores"], 2),
                    span(s["cpu_ms"].get("containers"), 2),
                    span(s["machine_busy"] and tuple(100 * v for v in s["machine_busy"])),
                ]
            )
    header = ["scenario", "target", "Locust processes", "generator", "docker-proxy"]
    header += ["docker engine", "containers", "other work", "containers' CPU ms per request"]
    return Table([*header, "machine busy %"], rows)


def idle_table(results: Doc) -> Table | None:
    """Each container's memory and CPU before the first run, if they were read."""
    docker = results["docker"]
    idle = docker.get("idle", {})
    if not idle:
        return None
    names = docker["containers"]
    row = [f"{mib(idle[n]['mem'])}, {idle[n]['cpu']:.0f}%" if n in idle else DASH for n in names]
    project = results["config"]["compose_project"]
    return Table(
        ["when", *(short(n, project) for n in names)], [["idle, before the first run", *row]]
    )


def loaded_table(results: Doc) -> Table:
    """Per scenario and target, each container's peak memory and CPU and its mean cores."""
    names = results["docker"]["containers"]
    rows = []
    for scenario in results["config"]["scenarios"]:
        for target in results["targets"]:
            mine = [
                r
                for r in loaded(results)
                if r["scenario"] == scenario and r["target"] == target["name"]
            ]
            if not mine:
                continue
            cells = []
            for n in names:
                mems = [r["containers"][n]["mem"] for r in mine if n in r.get("containers", {})]
                cpus = [r["containers"][n]["cpu"] for r in mine if n in r.get("containers", {})]
                means = [r["container_cores"][n] for r in mine if n in r.get("container_cores", {})]
                cell = f"{mib(max(mems))}, {max(cpus):.0f}%" if mems else DASH
                if means:
                    cell += f", {statistics.median(means):.2f}"
                cells.append(cell)
            rows.append([scenario, target["name"], *cells])
    project = results["config"]["compose_project"]
    return Table(["scenario", "target", *(short(n, project) for n in names)], rows)


def knee_table(results: Doc) -> Table:
    """Per scenario and target of a step load: the knee, why, and the best step before it."""
    step_max = results["config"]["step_max"]
    rows = []
    for entry in results["steps"]:
        knee = entry.get("knee")
        if entry.get("skipped"):
            rows.append([entry["scenario"], entry["target"], "skipped", "", "", entry["skipped"]])
            continue
        best = entry.get("best") or {}
        rows.append(
            [
                entry["scenario"],
                entry["target"],
                f"{knee['users']} users" if knee else f"> {step_max} users",
                (knee or {}).get("why", "not reached"),
                f"{num(best.get('rps'))} at {best.get('users', DASH)} users" if best else DASH,
                f"{entry.get('failures', 0):,} failed",
            ]
        )
    return Table(["scenario", "target", "knee", "why", "best requests/s", "failures"], rows)


def step_table(entry: Doc) -> Table:
    """One step load's figures, step by step."""
    rows = [
        [str(s["users"]), num(s["rps"]), fmt_ms(s["p50"]), fmt_ms(s["p99"]), str(s["failures"])]
        for s in entry["per_step"]
    ]
    return Table(["users", "requests/s", "p50 ms", "p99 ms", "failures"], rows)
