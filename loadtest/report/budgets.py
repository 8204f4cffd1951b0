"""The stack's performance budgets (loadtest/README.md), each checked against the medians."""

from __future__ import annotations

import re

from loadtest.report.format import TIMES, fmt_ms, num
from loadtest.report.summary import (
    BASELINE,
    COMPONENTS,
    NOISY_CORES,
    TARGET_SERVICES,
    Doc,
    Summary,
    TargetSummary,
    loaded,
)
from loadtest.report.tables import Table

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


def budgets_table(results: Doc, summary: Summary) -> Table:
    """Each of the stack's performance budgets, met or missed, with the figures and, where
    missed, what limited it."""
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
                    f"{ratio:.2f}{TIMES} ({num(stack['rps'][0])} vs "
                    f"{num(gunicorn['rps'][0])} requests/s)"
                )
            why = _why(stack, gunicorn, "gunicorn") if met is False else ""
            rows.append([scenario, "requests/s ≥ gunicorn gthread", measured, status[met], why])
    header = ["scenario", "budget", "measured (median)", "", "what limited it"]
    return Table(header, rows + _memory_rows(results))


def _memory_rows(results: Doc) -> list[list[str]]:
    """The app replica's memory budgets, idle and at the default load (or the step load)."""
    apps = _app_containers(results.get("docker", {}).get("containers", []))
    if not apps:
        return []
    rows = []
    idle = results["docker"].get("idle", {})
    idle_mem = {n: idle[n]["mem"] for n in apps if n in idle}
    peak = {}
    for r in loaded(results):
        for n in apps:
            if n in r["containers"]:
                peak[n] = max(peak.get(n, 0.0), r["containers"][n]["mem"])
    where = "under step load, up to one step past the knee" if not results["runs"] else ""
    for label, limit, peaks, when in (
        ("idle", IDLE_MB_BUDGET, idle_mem, ""),
        ("at the default load", LOAD_MB_BUDGET, peak, where),
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


def _largest(s: TargetSummary, target: str) -> str:
    """The component of a target whose CPU per request is largest, and that figure."""
    parts = {k: v[0] for k, v in s["cpu_ms"].items() if k != "containers"}
    if not parts:
        return ""
    top = max(parts, key=parts.__getitem__)
    label = "/".join(TARGET_SERVICES[target][top]) if top == "server" else COMPONENTS[top]
    return f"largest CPU per request: {label} {parts[top]:.2f} ms"


def _why(stack: TargetSummary, other: Doc, other_name: str) -> str:
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


def _app_containers(names: list[str]) -> list[str]:
    return [n for n in names if re.search(r"[_-]app[_-]\d+$", n)]
