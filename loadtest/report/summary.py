"""What the report says per scenario and target: medians over rounds, the ratio to the
built-in server paired by round, the generator-limited rounds, CPU per request by component.

Everything here reads results.json as it is on disk (`Doc`): the runner's report and a rebuilt
one come from the same figures.
"""

from __future__ import annotations

from typing import Any, TypedDict

from loadtest.stats import Range, median_min_max

Doc = dict[str, Any]  # results.json, as loadtest.results.Results.to_json writes it

BASELINE = "builtin"  # the target every other is divided by
NOISY_CORES = 0.25  # other work on the machine above this during a run makes it noisy
GEN_LIMIT = 0.70  # a result above this share of the generator's ceiling is generator-limited


class TargetSummary(TypedDict):
    """One scenario on one target, over its rounds; a Range is (median, min, max)."""

    rounds: int
    rps: Range | None
    p50: Range | None
    p95: Range | None
    p99: Range | None
    failures: int
    requests: int
    ratio: Range | None  # ÷ the built-in server, paired by round
    ratio_gunicorn: Range | None
    generator_limited_rounds: list[int]
    processes: list[int]
    gen_cores: Range | None
    machine_busy: Range | None
    proxy_cores: Range | None
    engine_cores: Range | None
    server_cores: Range | None  # the containers that serve this target
    other_cores: Range | None
    containers_unread: list[str]
    cpu_ms: dict[str, Range]  # by COMPONENTS key
    app_ms: float | None  # the scenario's requests in-process in a replica: CPU ms per call
    overhead_ms: Range | None  # the Python server's CPU ms per request less app_ms, per run


class Skipped(TypedDict):
    skipped: str


Summary = dict[str, dict[str, TargetSummary | Skipped]]  # scenario -> target -> figures


# The compose services that serve each target, by component: nginx in front, the Python server
# (all its replicas added up) and Postgres; for the stack also its monitoring (MONITORING=1),
# which costs CPU whatever the load. The other containers idle meanwhile.
TARGET_SERVICES: dict[str, dict[str, tuple[str, ...]]] = {
    "stack": {
        "nginx": ("nginx",),
        "server": ("app",),
        "postgres": ("postgres",),
        "monitoring": ("prometheus", "nginx-exporter", "postgres-exporter"),
    },
    BASELINE: {"server": ("devserver",), "postgres": ("postgres",)},
    "tornado-nothread": {
        "nginx": ("nginx",),
        "server": ("ref-nothread",),
        "postgres": ("postgres",),
    },
    "gunicorn": {"nginx": ("nginx",), "server": ("ref-gunicorn",), "postgres": ("postgres",)},
}
# Components that only some stacks run: counted, and shown, only when a container of theirs was.
OPTIONAL = {"monitoring"}
# Where a request's CPU goes: the target's containers, their total, then Docker's own processes.
COMPONENTS = {
    "nginx": "nginx",
    "server": "Python server",
    "postgres": "Postgres",
    "monitoring": "monitoring",
    "containers": "containers",
    "proxy": "docker-proxy",
    "engine": "docker engine",
}


def by_component(results: Doc, run: Doc, per_container: dict[str, float]) -> dict[str, float]:
    """A run's per-container figures added up per component of its target, their total under
    "containers" (only that total, over every container, when the services are unknown).
    An OPTIONAL component is left out when none of its containers was measured."""
    services = results.get("docker", {}).get("services", {})
    wanted = TARGET_SERVICES.get(run["target"])
    if not services or not wanted:
        return {"containers": sum(per_container.values())}
    out = {}
    for component, names in wanted.items():
        mine = [v for n, v in per_container.items() if services.get(n) in names]
        if mine or component not in OPTIONAL:
            out[component] = sum(mine)
    out["containers"] = sum(out.values())
    return out


def own_cores(results: Doc, run: Doc) -> float:
    """Cores used during a run by the containers that serve its target (all, if unknown)."""
    return by_component(results, run, run.get("container_cores", {}))["containers"]


def cpu_ms_per_request(results: Doc, run: Doc) -> dict[str, float]:
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


def app_ms(results: Doc, scenario: str) -> float | None:
    """CPU ms one in-process call of the scenario's requests cost the app (loadtest/appcall.py);
    None when it was not measured."""
    return (results.get("app_cost", {}).get(scenario) or {}).get("ms")


def hosting_overhead(per_request: list[dict[str, float]], app: float | None) -> Range | None:
    """What the Python server spends per request beyond the app's own call, run by run: its CPU
    ms per request (cpu_ms_per_request) less the app's in-process ms per call."""
    if app is None:
        return None
    return median_min_max([p["server"] - app for p in per_request if "server" in p])


def _rps_by_round(runs: list[Doc], scenario: str, target: str) -> dict[int, float]:
    return {
        r["round"]: r["rps"]
        for r in runs
        if r["scenario"] == scenario and r["target"] == target and r["rps"]
    }


def _paired_ratio(mine: list[Doc], other: dict[int, float]) -> Range | None:
    """This target's requests/s ÷ another's in the same round, as median, min and max."""
    return median_min_max([r["rps"] / other[r["round"]] for r in mine if r["round"] in other])


def summarize(results: Doc) -> Summary:
    """Per scenario and target: medians over rounds, ratios to the built-in server, flags."""
    runs = results["runs"]
    ceilings = results.get("ceiling", {}).get("rps", {})
    summary: Summary = {}
    for scenario in results["config"]["scenarios"]:
        per_target: dict[str, TargetSummary | Skipped] = {}
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
            app = app_ms(results, scenario)
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
                "app_ms": app,
                "overhead_ms": hosting_overhead(per_request, app),
            }
        summary[scenario] = per_target
    return summary


def loaded(results: Doc) -> list[Doc]:
    """Runs with container peaks: a comparison's rounds, or a step load's scenario and target."""
    return [r for r in results["runs"] + results.get("steps", []) if "containers" in r]
