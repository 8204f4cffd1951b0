"""Turn the runner's results.json into report.md, PNG charts and the console table.

python -m loadtest.report loadtest/results/<timestamp>    # rebuild a report
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

DASH = "\u2013"  # en dash, for ranges
TIMES = "\u00d7"  # multiplication sign, for ratios
BASELINE = "builtin"
NOISY_CORES = 0.25  # other work on the machine above this during a run makes it noisy
GEN_LIMIT = 0.70  # a result above this share of the generator's ceiling is generator-limited
KNEE_P99_MS = 500.0

# The stack's performance budgets (loadtest/README.md), checked under "Against the budgets".
# Stack ÷ built-in requests/s, paired by round.
RATIO_BUDGETS = {
    "plaintext": 3.0,
    "json": 3.0,
    "db": 2.5,
    "queries": 2.5,
    "fortunes": 2.5,
    "io": 2.0,
    "api": 2.0,
}
CPU_MS_BUDGETS = {"plaintext": 0.55, "json": 0.55}  # the stack's containers, CPU ms per request
CPU_SHARE_BUDGET = 0.6  # stack ÷ built-in CPU per request, every scenario
GUNICORN_SCENARIOS = ("json", "db", "io")  # REFERENCE=1: stack requests/s ≥ gunicorn's
IDLE_MB_BUDGET = 120  # an app replica's memory, idle
LOAD_MB_BUDGET = 200  # ... and at the default load


# --- numbers ---------------------------------------------------------------------------


def merge_times(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up per-process tallies ({requests, failures, times: {ms: count}})."""
    out: dict[str, Any] = {"requests": 0, "failures": 0, "times": {}}
    for t in tallies:
        out["requests"] += t["requests"]
        out["failures"] += t["failures"]
        for ms, n in t["times"].items():
            out["times"][float(ms)] = out["times"].get(float(ms), 0) + n
    return out


def percentile(times: dict[float, int], q: float) -> float | None:
    """The smallest bucket at or below which a share q of the requests finished."""
    total = sum(times.values())
    if not total:
        return None
    need = q * total
    seen = 0
    for ms in sorted(times):
        seen += times[ms]
        if seen >= need:
            return ms
    return max(times)


def median_min_max(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


# The compose services that serve each target, by component: nginx in front, the Python server
# (all its replicas added up) and Postgres. The other containers idle meanwhile.
TARGET_SERVICES: dict[str, dict[str, str]] = {
    "stack": {"nginx": "nginx", "server": "app", "postgres": "postgres"},
    BASELINE: {"server": "devserver", "postgres": "postgres"},
    "tornado-nothread": {"nginx": "nginx", "server": "ref-nothread", "postgres": "postgres"},
    "gunicorn": {"nginx": "nginx", "server": "ref-gunicorn", "postgres": "postgres"},
}
# Where a request's CPU goes: the target's containers, their total, then Docker's own processes.
COMPONENTS = {
    "nginx": "nginx",
    "server": "Python server",
    "postgres": "Postgres",
    "containers": "containers",
    "proxy": "docker-proxy",
    "engine": "docker engine",
}


def by_component(
    results: dict[str, Any], run: dict[str, Any], per_container: dict[str, float]
) -> dict[str, float]:
    """A run's per-container figures added up per component of its target, their total under
    "containers" (only that total, over every container, when the services are unknown)."""
    services = results.get("docker", {}).get("services", {})
    wanted = TARGET_SERVICES.get(run["target"])
    if not services or not wanted:
        return {"containers": sum(per_container.values())}
    out = {
        component: sum(v for n, v in per_container.items() if services.get(n) == service)
        for component, service in wanted.items()
    }
    out["containers"] = sum(out.values())
    return out


def own_cores(results: dict[str, Any], run: dict[str, Any]) -> float:
    """Cores used during a run by the containers that serve its target (all, if unknown)."""
    return by_component(results, run, run.get("container_cores", {}))["containers"]


def cpu_ms_per_request(results: dict[str, Any], run: dict[str, Any]) -> dict[str, float]:
    """CPU ms that one request of a run cost, per component (COMPONENTS) that was measured.

    CPU seconds over the whole run ÷ the requests it served, warm-up included on both sides;
    failed requests are left out, as from requests/s.
    """
    served = run["requests_total"] - run["failures_total"]
    if served <= 0:
        return {}
    seconds = {}
    if run.get("container_cpu_s"):
        seconds = by_component(results, run, run["container_cpu_s"])
    for key in ("proxy", "engine"):
        if f"{key}_cpu_s" in run:
            seconds[key] = run[f"{key}_cpu_s"]
    return {k: 1000 * v / served for k, v in seconds.items()}


def _rps_by_round(runs: list[dict[str, Any]], scenario: str, target: str) -> dict[int, float]:
    return {
        r["round"]: r["rps"]
        for r in runs
        if r["scenario"] == scenario and r["target"] == target and r["rps"]
    }


def _paired_ratio(
    mine: list[dict[str, Any]], other: dict[int, float]
) -> tuple[float, float, float] | None:
    """This target's requests/s ÷ another's in the same round, as median, min and max."""
    return median_min_max([r["rps"] / other[r["round"]] for r in mine if r["round"] in other])


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per scenario and target: medians over rounds, ratios to the built-in server, flags."""
    runs = results["runs"]
    ceilings = results.get("ceiling", {}).get("rps", {})
    summary: dict[str, Any] = {}
    for scenario in results["config"]["scenarios"]:
        per_target: dict[str, Any] = {}
        base_by_round = _rps_by_round(runs, scenario, BASELINE)
        gunicorn_by_round = _rps_by_round(runs, scenario, "gunicorn")
        for target in results["targets"]:
            name = target["name"]
            if target.get("skipped"):
                per_target[name] = {"skipped": target["skipped"]}
                continue
            mine = [r for r in runs if r["scenario"] == scenario and r["target"] == name]
            if not mine:
                continue
            per_request = [cpu_ms_per_request(results, r) for r in mine]
            limited = []
            for r in mine:
                ceiling = ceilings.get(str(r["processes"]))
                if ceiling and r["rps"] > GEN_LIMIT * ceiling:
                    limited.append(r["round"])
            per_target[name] = {
                "rounds": len(mine),
                "rps": median_min_max([r["rps"] for r in mine]),
                "p50": median_min_max([r["p50"] for r in mine]),
                "p95": median_min_max([r["p95"] for r in mine]),
                "p99": median_min_max([r["p99"] for r in mine]),
                "failures": sum(r["failures_total"] for r in mine),
                "requests": sum(r["requests_total"] for r in mine),
                "ratio": None if name == BASELINE else _paired_ratio(mine, base_by_round),
                "ratio_gunicorn": _paired_ratio(mine, gunicorn_by_round),
                "generator_limited_rounds": limited,
                "processes": sorted({r["processes"] for r in mine}),
                "gen_cores": median_min_max([r["gen_cores"] for r in mine]),
                "machine_busy": median_min_max([r["machine_busy"] for r in mine]),
                "proxy_cores": median_min_max([r.get("proxy_cores", 0.0) for r in mine]),
                "engine_cores": median_min_max([r.get("engine_cores") for r in mine]),
                "server_cores": median_min_max(
                    [own_cores(results, r) for r in mine]
                    if any(r.get("container_cores") for r in mine)
                    else []
                ),
                "other_cores": median_min_max(
                    [r["other_cores"] for r in mine if r.get("other_cores") is not None]
                ),
                "containers_unread": sorted(
                    {n for r in mine for n in r.get("containers_unread", [])}
                ),
                "cpu_ms": {
                    k: mmm
                    for k in COMPONENTS
                    if (mmm := median_min_max([p[k] for p in per_request if k in p]))
                },
            }
        summary[scenario] = per_target
    return summary


# --- formatting ------------------------------------------------------------------------


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return DASH
    return f"{x:,.{digits}f}"


def fmt_ms(x: float | None) -> str:
    return DASH if x is None else f"{x:g}"


def _range(mmm: tuple[float, float, float] | None, digits: int = 0, suffix: str = "") -> str:
    if not mmm:
        return DASH
    med, lo, hi = mmm
    if lo == hi:
        return f"{_n(med, digits)}{suffix}"
    return f"{_n(med, digits)}{suffix} ({_n(lo, digits)}{DASH}{_n(hi, digits)})"


def table_rows(results: dict[str, Any], summary: dict[str, Any]) -> list[list[str]]:
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
                gone = ", ".join(
                    n.removeprefix(project).lstrip("_-") for n in s["containers_unread"]
                )
                flags.append(f"CPU not read: {gone} (gone or recreated during the run)")
            rows.append(
                [
                    scenario,
                    target["name"],
                    _range(s["rps"]),
                    fmt_ms(s["p50"] and s["p50"][0]),
                    fmt_ms(s["p95"] and s["p95"][0]),
                    fmt_ms(s["p99"] and s["p99"][0]),
                    f"{s['failures']:,}",
                    DASH if target["name"] == BASELINE else _range(s["ratio"], 2, TIMES),
                    "; ".join(flags),
                ]
            )
    return rows


HEADER = [
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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def console_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in out)


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def _app_containers(names: list[str]) -> list[str]:
    return [n for n in names if re.search(r"[_-]app[_-]\d+$", n)]


def containers_section(results: dict[str, Any]) -> list[str]:
    docker = results.get("docker", {})
    if not docker.get("containers"):
        return [f"Not sampled: {docker.get('reason', 'docker unavailable')}."]
    names = docker["containers"]
    short = [n.removeprefix(results["config"]["compose_project"]).lstrip("_-") for n in names]
    lines = [
        "Per container: peak memory and peak CPU (100% = one core), read from the container's "
        "cgroup files every 0.5 s during each run (warm-up included) and counted as `docker "
        "stats` counts them (memory without the inactive file cache), highest over the rounds; "
        "then the mean CPU in cores over the run, median over the rounds.",
        "",
    ]
    idle = docker.get("idle", {})
    if idle:
        row = [
            f"{_mib(idle[n]['mem'])}, {idle[n]['cpu']:.0f}%" if n in idle else DASH for n in names
        ]
        lines += [markdown_table(["when", *short], [["idle, before the first run", *row]]), ""]
    rows = []
    for scenario in results["config"]["scenarios"]:
        for target in results["targets"]:
            mine = [
                r
                for r in _loaded(results)
                if r["scenario"] == scenario and r["target"] == target["name"]
            ]
            if not mine:
                continue
            cells = []
            for n in names:
                mems = [r["containers"][n]["mem"] for r in mine if n in r.get("containers", {})]
                cpus = [r["containers"][n]["cpu"] for r in mine if n in r.get("containers", {})]
                means = [r["container_cores"][n] for r in mine if n in r.get("container_cores", {})]
                cell = f"{_mib(max(mems))}, {max(cpus):.0f}%" if mems else DASH
                if means:
                    cell += f", {statistics.median(means):.2f}"
                cells.append(cell)
            rows.append([scenario, target["name"], *cells])
    lines.append(markdown_table(["scenario", "target", *short], rows))
    return lines


def _loaded(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs with container peaks: a comparison's rounds, or a step load's scenario and target."""
    return [r for r in results["runs"] + results.get("steps", []) if "containers" in r]


def cpu_section(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Where one request's CPU goes, per component, for every scenario and target."""
    rows = []
    for scenario, per_target in summary.items():
        for target in results["targets"]:
            s = per_target.get(target["name"])
            if not s or "skipped" in s or not s["cpu_ms"]:
                continue
            rows.append(
                [scenario, target["name"], *(_range(s["cpu_ms"].get(k), 2) for k in COMPONENTS)]
            )
    if not rows:
        return ["Not measured: no run read its containers' CPU (see *Containers*)."]
    return [
        f"CPU ms per request, median over rounds (min{DASH}max): each component's CPU time over "
        "the whole run ÷ the successful requests of that run, warm-up included on both sides. "
        "*Python server* is the `app` replicas added up (stack), the `devserver` (built-in), or "
        "the `ref-nothread` or `ref-gunicorn` replicas (reference targets); nginx is on every "
        "path but the built-in server's. *containers* is their total with Postgres, from their "
        "cgroups: the figure the budgets check. Then, outside the containers, on the same "
        "scale: `docker-proxy` (every connection to a published port) and the docker engine "
        "(dockerd, containerd and the containerd shims, through which every line a container "
        "writes to stdout passes).",
        "",
        markdown_table(["scenario", "target", *COMPONENTS.values()], rows),
    ]


def budgets_section(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Each of the stack's performance budgets, met or missed, with the figures."""
    rows = []
    status = {True: "met", False: "MISSED", None: "not measured"}
    for scenario, s in summary.items():
        stack, base = s.get("stack"), s.get(BASELINE)
        if not stack or "skipped" in stack or not base or "skipped" in base:
            continue
        checks: list[tuple[str, str, bool | None]] = []
        goal = RATIO_BUDGETS.get(scenario)
        if goal and stack["ratio"]:
            ratio = stack["ratio"][0]
            checks.append(
                (f"requests/s ≥ {goal:g}{TIMES} built-in", f"{ratio:.2f}{TIMES}", ratio >= goal)
            )
        cpu, base_cpu = stack["cpu_ms"].get("containers"), base["cpu_ms"].get("containers")
        limit = CPU_MS_BUDGETS.get(scenario)
        if limit and cpu:
            checks.append((f"CPU per request ≤ {limit:g} ms", f"{cpu[0]:.2f} ms", cpu[0] <= limit))
        if cpu and base_cpu and base_cpu[0]:
            share = cpu[0] / base_cpu[0]
            checks.append(
                (
                    f"CPU per request ≤ {CPU_SHARE_BUDGET:g}{TIMES} built-in",
                    f"{cpu[0]:.2f} vs {base_cpu[0]:.2f} ms ({share:.2f}{TIMES})",
                    share <= CPU_SHARE_BUDGET,
                )
            )
        if stack["p99"] and base["p99"]:
            checks.append(
                (
                    "p99 below built-in, no failed request",
                    f"p99 {fmt_ms(stack['p99'][0])} vs {fmt_ms(base['p99'][0])} ms, "
                    f"{stack['failures']:,} failed",
                    stack["p99"][0] < base["p99"][0] and not stack["failures"],
                )
            )
        for budget, measured, met in checks:
            why = _why(stack, base, "built-in") if met is False else ""
            rows.append([scenario, budget, measured, status[met], why])
        gunicorn = s.get("gunicorn")
        if gunicorn and scenario in GUNICORN_SCENARIOS:
            met = None
            measured = gunicorn.get("skipped", "no round of both")
            if stack["ratio_gunicorn"]:
                ratio = stack["ratio_gunicorn"][0]
                met = ratio >= 1.0
                measured = (
                    f"{ratio:.2f}{TIMES} ({_n(stack['rps'][0])} vs "
                    f"{_n(gunicorn['rps'][0])} requests/s)"
                )
            why = _why(stack, gunicorn, "gunicorn") if met is False else ""
            rows.append([scenario, "requests/s ≥ gunicorn gthread", measured, status[met], why])
    rows += _memory_rows(results)
    if not rows:
        return ["No stack and built-in pair was measured."]
    return [
        "The stack's performance budgets (`loadtest/README.md`), each checked against the "
        "medians over rounds.",
        "",
        markdown_table(["scenario", "budget", "measured (median)", "", "what limited it"], rows),
        "",
        "*What limited it*, where a budget is missed: the stack's component with the largest CPU "
        "per request (all components: *Where a request's CPU goes*), what one request cost the "
        "servers in CPU and how many cores they got. Requests/s = server cores ÷ CPU per "
        f"request, so a ratio is (stack cores ÷ other cores) {TIMES} (other CPU per request ÷ "
        "stack CPU per request): on a saturated machine the first factor is capped by the cores "
        "left over, the second is the hosting's efficiency. `PROFILE=1` shows where inside a "
        "server process that CPU goes.",
    ]


def _memory_rows(results: dict[str, Any]) -> list[list[str]]:
    """The app replica's memory budgets, idle and at the default load (or the step load)."""
    apps = _app_containers(results.get("docker", {}).get("containers", []))
    if not apps:
        return []
    rows = []
    idle = results["docker"].get("idle", {})
    idle_mem = {n: idle[n]["mem"] for n in apps if n in idle}
    loaded = {}
    for r in _loaded(results):
        for n in apps:
            if n in r["containers"]:
                loaded[n] = max(loaded.get(n, 0.0), r["containers"][n]["mem"])
    where = "under step load, up to one step past the knee" if not results["runs"] else ""
    for label, limit, peaks, when in (
        ("idle", IDLE_MB_BUDGET, idle_mem, ""),
        ("at the default load", LOAD_MB_BUDGET, loaded, where),
    ):
        if not peaks:
            continue
        top = max(peaks, key=peaks.__getitem__)
        mb = peaks[top] / 1e6
        rows.append(
            [
                "all",
                f"an app replica under {limit} MB {label}",
                f"{mb:,.0f} MB at most" + (f", {when}" if when else ""),
                "met" if mb < limit else "MISSED",
                "" if mb < limit else top,
            ]
        )
    return rows


def _largest(s: dict[str, Any], target: str) -> str:
    """The component of a target whose CPU per request is largest, and that figure."""
    parts = {k: v[0] for k, v in s["cpu_ms"].items() if k != "containers"}
    if not parts:
        return ""
    top = max(parts, key=parts.__getitem__)
    label = TARGET_SERVICES[target][top] if top == "server" else COMPONENTS[top]
    return f"largest CPU per request: {label} {parts[top]:.2f} ms"


def _why(stack: dict[str, Any], other: dict[str, Any], other_name: str) -> str:
    """The measured facts behind a missed budget: the costliest component, cores, contention."""
    parts = [_largest(stack, "stack")]
    cpu, other_cpu = stack["cpu_ms"].get("containers"), other.get("cpu_ms", {}).get("containers")
    if cpu and other_cpu:
        parts.append(f"containers {cpu[0]:.2f} ms (stack) vs {other_cpu[0]:.2f} ms ({other_name})")
    if stack.get("server_cores") and other.get("server_cores"):
        parts.append(
            f"server cores {stack['server_cores'][0]:.2f} vs {other['server_cores'][0]:.2f}"
        )
    if stack.get("machine_busy"):
        parts.append(f"machine {100 * stack['machine_busy'][0]:.0f}% busy")
    if stack.get("other_cores") and stack["other_cores"][0] > NOISY_CORES:
        parts.append(f"other work {stack['other_cores'][0]:.2f} cores")
    if stack.get("generator_limited_rounds"):
        parts.append("generator-limited")
    return "; ".join(p for p in parts if p)


def knee_section(results: dict[str, Any]) -> list[str]:
    steps = results.get("steps", [])
    if not steps:
        return []
    cfg = results["config"]
    lines = [
        "## Knee (step load)",
        "",
        f"Users grow by {cfg['step_users']} every {cfg['step_time']:g} s up to {cfg['step_max']} "
        f"(`loadtest/stepload.py`). Per step, the first second (spawning) is left out. The knee "
        f"is the first step whose p99 passes {KNEE_P99_MS:g} ms or that has a failed request; "
        f"'best' is the highest requests/s of any step before it.",
        "",
    ]
    rows = []
    for entry in steps:
        knee = entry.get("knee")
        if entry.get("skipped"):
            rows.append([entry["scenario"], entry["target"], "skipped", "", "", entry["skipped"]])
            continue
        best = entry.get("best") or {}
        rows.append(
            [
                entry["scenario"],
                entry["target"],
                f"{knee['users']} users" if knee else f"> {cfg['step_max']} users",
                (knee or {}).get("why", "not reached"),
                f"{_n(best.get('rps'))} at {best.get('users', DASH)} users" if best else DASH,
                f"{entry.get('failures', 0):,} failed",
            ]
        )
    lines.append(
        markdown_table(["scenario", "target", "knee", "why", "best requests/s", "failures"], rows)
    )
    lines.append("")
    for entry in steps:
        if entry.get("skipped"):
            continue
        lines.append(
            f"<details><summary>{entry['scenario']} · {entry['target']}: per step</summary>"
        )
        lines.append("")
        lines.append(
            markdown_table(
                ["users", "requests/s", "p50 ms", "p99 ms", "failures"],
                [
                    [
                        str(s["users"]),
                        _n(s["rps"]),
                        fmt_ms(s["p50"]),
                        fmt_ms(s["p99"]),
                        str(s["failures"]),
                    ]
                    for s in entry["per_step"]
                ],
            )
        )
        lines += ["", "</details>", ""]
    return lines


def profiles_section(out_dir: Path, results: dict[str, Any]) -> list[str]:
    profiles = results.get("profiles", [])
    if not profiles:
        return []
    lines = [
        "## Profiles (PROFILE=1)",
        "",
        "py-spy `--gil` on one app replica (stack) or the devserver (built-in), during one extra "
        "run per scenario that is not part of the figures above. The hottest frames by self "
        "time; the full summaries (`profile-*.top.txt`) and raw collapsed stacks "
        "(`profile-*.pyspy.txt`, for speedscope or inferno) are in this directory.",
        "",
    ]
    for p in profiles:
        head = f"{p['scenario']} · {p['target']} ({p.get('container', '?')})"
        if p.get("error"):
            lines += [f"- {head}: py-spy failed: {p['error']}", ""]
            continue
        text = (out_dir / p["summary"]).read_text().splitlines()
        own = text[text.index("self:") + 1 : text.index("self:") + 11] if "self:" in text else []
        lines += [
            f"<details><summary>{head}: {text[0] if text else ''}</summary>",
            "",
            "```",
            *own,
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


def write_report(out_dir: Path, results: dict[str, Any]) -> str:
    """Write report.md and the charts; return the console table."""
    summary = summarize(results) if results.get("runs") else {}
    rows = table_rows(results, summary)
    cfg = results["config"]
    machine = results["machine"]
    ceiling = results.get("ceiling", {})
    lines = [
        f"# Load test report, {results['started']}",
        "",
        f"Stack `{_url(results, 'stack')}` (nginx → Tornado-hosted Flask replicas → Postgres) "
        f"against Flask's built-in server `{_url(results, BASELINE)}`, same app, same scenarios.",
        "",
    ]
    if cfg["smoke"]:
        lines += [
            "> **Smoke run** (SMOKE=1): a few seconds per scenario to check the runner end to "
            "end. Its figures are not measurements; run `make loadtest` for those.",
            "",
        ]
    if summary:
        lines += [
            "## Results",
            "",
            f"Median over {cfg['rounds']} round(s) of {cfg['duration']:g} s each after a "
            f"{cfg['warmup']:g} s warm-up, {cfg['users']} concurrent users without think time "
            f"(closed loop); ranges in brackets are min{DASH}max over the rounds. "
            "Failures count every "
            f"failed request of every round, warm-up included.",
            "",
            markdown_table(HEADER, rows),
            "",
            "- **requests/s**: successful requests that completed inside the measured window "
            "÷ its length (failed ones are in *failures*, not here).",
            "- **p50/p95/p99**: response-time percentiles in that window, as the client saw them "
            "(connect included), median over rounds.",
            "- **÷ built-in**: this target's requests/s ÷ the built-in server's in the same round.",
            f"- **generator-limited**: that round exceeded {GEN_LIMIT:.0%} of what the load "
            "generator itself can drive (its ceiling, below): the figure is a lower bound for "
            "the server, and its ratio says more about Locust than about the server.",
            "",
            f"Charts: `throughput.png` (requests/s, bars = median, whiskers = min{DASH}max), "
            "`latency.png` (p50/p95/p99).",
            "",
        ]
    lines += knee_section(results)
    if summary or _memory_rows(results):
        lines += ["## Against the budgets", "", *budgets_section(results, summary), ""]
    if summary:
        lines += ["## Where a request's CPU goes", "", *cpu_section(results, summary), ""]
    lines += ["## Load generator", ""]
    if ceiling.get("rps"):
        cells = ", ".join(
            f"{p} process{'es' if p != '1' else ''}: {_n(v)} requests/s"
            for p, v in sorted(ceiling["rps"].items())
        )
        lines += [
            f"Ceiling against `{cfg['ceiling_url']}` (a constant answered by nginx itself), "
            f"{cfg['users']} users: {cells}. The limit for the generator-limited mark is "
            f"{GEN_LIMIT:.0%} of the ceiling with the same number of processes.",
        ]
    else:
        lines.append(f"Ceiling not measured: {ceiling.get('reason', 'unknown')}.")
    lines += [
        "",
        "The ceiling is measured over keep-alive connections. Werkzeug's server closes the "
        "connection after every response, so against it each request also costs the generator "
        "a TCP connect: its ceiling there is lower than the figure above.",
        "",
    ]
    if summary:
        gen_rows = []
        for scenario, per_target in summary.items():
            for name, s in per_target.items():
                if "skipped" in s:
                    continue
                gen_rows.append(
                    [
                        scenario,
                        name,
                        ",".join(map(str, s["processes"])),
                        _range(s["gen_cores"], 2),
                        _range(s["proxy_cores"], 2),
                        _range(s["engine_cores"], 2),
                        _range(s["server_cores"], 2),
                        _range(s["other_cores"], 2),
                        _range(s["cpu_ms"].get("containers"), 2),
                        _range(s["machine_busy"] and tuple(100 * v for v in s["machine_busy"])),
                    ]
                )
        lines += [
            f"Where the machine's {machine['cores']} cores went during the runs, in cores, median "
            f"(min{DASH}max): the generator (Locust master and workers); `docker-proxy`, "
            "Docker's userland proxy, which every connection to a port published on 127.0.0.1 "
            "goes through (both targets); the docker engine (dockerd, containerd and the "
            "containerd shims, which carry every line the containers log); the containers "
            "serving the target (from their cgroups: app replicas, nginx and Postgres for the "
            "stack; devserver and Postgres for the built-in server; the reference replicas, "
            "nginx and Postgres for a reference target); other work on the machine (busy time "
            "that neither the generator, the proxies, the engine nor any of this project's "
            "containers explain); and the whole machine's busy share. "
            f"Other work above {NOISY_CORES:g} cores marks a result as noisy. CPU per request "
            "is those containers' CPU time over the run ÷ the requests it served: what one "
            "request costs the server side, which contention on a busy machine changes far "
            "less than requests/s; *Where a request's CPU goes* splits it by component.",
            "",
            markdown_table(
                [
                    "scenario",
                    "target",
                    "Locust processes",
                    "generator",
                    "docker-proxy",
                    "docker engine",
                    "containers",
                    "other work",
                    "containers' CPU ms per request",
                    "machine busy %",
                ],
                gen_rows,
            ),
            "",
        ]
    lines += ["## Containers", "", *containers_section(results), ""]
    lines += profiles_section(out_dir, results)
    lines += [
        "## How it was run",
        "",
        f"- Command: `{results['command']}`",
        f"- Settings: SCENARIOS={','.join(cfg['scenarios'])} USERS={cfg['users']} "
        f"DURATION={cfg['duration']:g} WARMUP={cfg['warmup']:g} ROUNDS={cfg['rounds']} "
        f"PROCESSES={cfg['processes']} SHAPE={cfg['shape'] or '-'} SMOKE={int(cfg['smoke'])} "
        f"LOGIN_RATE={cfg['login_rate']:g} API_ACCOUNTS={cfg['api_accounts']}",
        "- Target order alternates every round (forward, then reversed), so drift on a noisy "
        "machine does not always favour the same target.",
        "- The measured window is counted by the scenarios themselves, per process "
        "(`loadtest/locustfile.py`), and added up; Locust's CSV and HTML next to this file "
        "cover the whole run after ramp-up and can differ slightly.",
        "- `api` users take accounts that the runner registered and signed in before the runs "
        f"({cfg['api_accounts']} per target, shared round-robin), because registration and login "
        "hash with bcrypt and nginx rate-limits login per client address; inside the mix a user "
        f"signs in again at most {cfg['login_rate']:g} times a second in total.",
        "",
        "Targets:",
        "",
    ]
    for t in results["targets"]:
        state = f"skipped: {t['skipped']}" if t.get("skipped") else t.get("server", "")
        lines.append(f"- `{t['name']}` {t['url']} — {t['description']}. {state}".rstrip())
    lines += [
        "",
        "Locust asks for `Accept-Encoding: gzip, deflate, br`, as browsers do: nginx compresses "
        "text responses of 1 KiB and more (fortunes, post listings); the built-in server "
        "compresses nothing.",
        "",
        "About the built-in server: `flask run` (and `app.run()`) is threaded, one new thread "
        "per connection, and Werkzeug answers every request with `Connection: close`, so its "
        "clients reconnect for each request. That is part of what is measured here.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        "",
    ]
    notes = results.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file() or p.is_dir())
    lines += [
        "## Files",
        "",
        "Per run: `<scenario>-<target>-r<round>_stats.csv` (and `_failures.csv`, "
        "`_stats_history.csv`), `.html`, `.json` (Locust's own) and `measure/` (the window "
        f"counts). {len(files)} entries in this directory.",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    try:
        charts(out_dir, results, summary)
    except Exception as exc:  # a chart must not cost the report
        (out_dir / "charts-error.txt").write_text(repr(exc))
    if rows:
        return console_table(HEADER, rows)
    knee = knee_section(results)
    cut = next((i for i, line in enumerate(knee) if line.startswith("<details>")), len(knee))
    return "\n".join(knee[:cut]).strip()


def _url(results: dict[str, Any], name: str) -> str:
    for t in results["targets"]:
        if t["name"] == name:
            return t["url"]
    return "?"


def charts(out_dir: Path, results: dict[str, Any], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t["name"] for t in results["targets"] if not t.get("skipped")]
    colors = {n: f"C{i}" for i, n in enumerate(targets)}
    if summary:
        scenarios = list(summary)
        cols = min(4, len(scenarios))
        rows = -(-len(scenarios) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, scenario in zip(axes.flat, scenarios, strict=False):
            names = [n for n in targets if summary[scenario].get(n, {}).get("rps")]
            meds = [summary[scenario][n]["rps"][0] for n in names]
            err = [
                [m - summary[scenario][n]["rps"][1] for n, m in zip(names, meds, strict=True)],
                [summary[scenario][n]["rps"][2] - m for n, m in zip(names, meds, strict=True)],
            ]
            ax.bar(names, meds, yerr=err, capsize=3, color=[colors[n] for n in names])
            for i, m in enumerate(meds):
                ax.annotate(f"{m:,.0f}", (i, m), ha="center", va="bottom", fontsize=7)
            ax.set_title(scenario)
            ax.set_ylabel("requests/s")
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        for ax in list(axes.flat)[len(scenarios) :]:
            ax.set_visible(False)
        fig.suptitle(f"Throughput (median over rounds, min{DASH}max)")
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, scenario in zip(axes.flat, scenarios, strict=False):
            names = [n for n in targets if summary[scenario].get(n, {}).get("p50")]
            width = 0.8 / max(1, len(names))
            for i, n in enumerate(names):
                vals = [summary[scenario][n][p][0] for p in ("p50", "p95", "p99")]
                xs = [j + i * width for j in range(3)]
                ax.bar(xs, vals, width=width, color=colors[n], label=n)
                for x, v in zip(xs, vals, strict=True):
                    ax.annotate(f"{v:g}", (x, v), ha="center", va="bottom", fontsize=6)
            ax.set_xticks(
                [j + width * (len(names) - 1) / 2 for j in range(3)], ["p50", "p95", "p99"]
            )
            ax.set_title(scenario)
            ax.set_ylabel("ms")
        for ax in list(axes.flat)[len(scenarios) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower right", fontsize=8)
        fig.suptitle("Latency percentiles (median over rounds)")
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=110)
        plt.close(fig)

    steps = [s for s in results.get("steps", []) if not s.get("skipped")]
    if steps:
        scenarios = list(dict.fromkeys(s["scenario"] for s in steps))
        fig, axes = plt.subplots(len(scenarios), 2, figsize=(9, 3 * len(scenarios)), squeeze=False)
        for (ax_rps, ax_p99), scenario in zip(axes, scenarios, strict=True):
            for entry in (s for s in steps if s["scenario"] == scenario):
                users = [p["users"] for p in entry["per_step"]]
                color = colors.get(entry["target"])
                ax_rps.plot(
                    users,
                    [p["rps"] for p in entry["per_step"]],
                    "o-",
                    color=color,
                    label=entry["target"],
                )
                ax_p99.plot(
                    users,
                    [p["p99"] for p in entry["per_step"]],
                    "o-",
                    color=color,
                    label=entry["target"],
                )
            ax_p99.axhline(KNEE_P99_MS, color="grey", linestyle="--", linewidth=1)
            ax_rps.set_title(f"{scenario}: requests/s")
            ax_p99.set_title(f"{scenario}: p99 ms")
            ax_p99.set_yscale("log")
            for ax in (ax_rps, ax_p99):
                ax.set_xlabel("users")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "stepload.png", dpi=110)
        plt.close(fig)


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1])
    results = json.loads((out_dir / "results.json").read_text())
    print(write_report(out_dir, results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
