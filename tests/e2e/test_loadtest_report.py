"""The load-test report's arithmetic, on made-up runs (no stack needed, nothing timed)."""

from __future__ import annotations

from pathlib import Path

from loadtest import report
from loadtest.run import parse_config, step_knee
from loadtest.sampling import parse_percent, parse_size


def run(scenario, target, rnd, rps, p99=10.0, failures=0, processes=1):
    return {
        "scenario": scenario,
        "target": target,
        "round": rnd,
        "rps": rps,
        "p50": 1.0,
        "p95": 5.0,
        "p99": p99,
        "failures_total": failures,
        "requests_total": int(rps * 10),
        "processes": processes,
        "gen_cores": 0.5,
        "machine_busy": 0.9,
        "containers": {},
    }


def results_with(runs, ceiling=None):
    cfg = parse_config([])
    cfg.scenarios = sorted({r["scenario"] for r in runs})
    return {
        "started": "now",
        "command": "python -m loadtest.run",
        "config": cfg.__dict__,
        "machine": {"cores": "2"},
        "targets": [
            {"name": "stack", "url": "http://s", "description": "stack"},
            {"name": "builtin", "url": "http://b", "description": "built-in"},
        ],
        "docker": {"containers": [], "reason": "test"},
        "ceiling": {"rps": ceiling or {}},
        "runs": runs,
        "steps": [],
        "notes": [],
    }


def test_percentile_and_merge():
    merged = report.merge_times(
        [
            {"requests": 2, "failures": 0, "times": {"1": 1, "10": 1}},
            {"requests": 2, "failures": 1, "times": {"10": 1, "100": 1}},
        ]
    )
    assert merged["requests"] == 4 and merged["failures"] == 1
    assert report.percentile(merged["times"], 0.5) == 10
    assert report.percentile(merged["times"], 0.99) == 100
    assert report.percentile({}, 0.5) is None


def test_ratio_is_paired_by_round_and_summarised_as_median_min_max():
    runs = [
        run("json", "stack", 1, 3000),
        run("json", "builtin", 1, 1000),
        run("json", "stack", 2, 2000),
        run("json", "builtin", 2, 1000),
        run("json", "stack", 3, 2000),
        run("json", "builtin", 3, 500),
    ]
    s = report.summarize(results_with(runs))["json"]
    assert s["stack"]["ratio"] == (3.0, 2.0, 4.0)
    assert s["stack"]["rps"] == (2000, 2000, 3000)
    assert s["builtin"]["ratio"] is None


def test_generator_limited_above_70_percent_of_the_ceiling_with_the_same_processes():
    runs = [
        run("plaintext", "stack", 1, 7100),
        run("plaintext", "builtin", 1, 6900),
        run("plaintext", "stack", 2, 7100, processes=2),
        run("plaintext", "builtin", 2, 1000),
    ]
    results = results_with(runs, ceiling={"1": 10000, "2": 20000})
    s = report.summarize(results)["plaintext"]
    assert s["stack"]["generator_limited_rounds"] == [1]
    assert s["builtin"]["generator_limited_rounds"] == []
    rows = report.table_rows(results, report.summarize(results))
    assert "generator-limited (round 1)" in rows[0][-1]


def test_report_written_with_every_row(tmp_path: Path):
    runs = [
        run(sc, t, 1, 1000 if t == "stack" else 400)
        for sc in ("json", "io")
        for t in ("stack", "builtin")
    ]
    results = results_with(runs, ceiling={"1": 10000})
    table = report.write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    for sc in ("json", "io"):
        assert f"| {sc} | stack | 1,000 |" in text
        assert f"| {sc} | builtin | 400 |" in text
    assert "2.50\u00d7" in table
    assert (tmp_path / "throughput.png").exists() and (tmp_path / "latency.png").exists()


def test_knee_is_the_first_step_over_500_ms_or_with_failures():
    cfg = parse_config(["--step-users", "10", "--step-time", "3", "--step-max", "40"])

    def sec(n, ms, failures=0):
        return {"requests": n, "failures": failures, "times": {ms: n}}

    # Seconds 0-2 step 1, 3-5 step 2, ...; the first second of a step is left out.
    per_second = {0: sec(5, 900), 1: sec(100, 20), 2: sec(100, 20)}
    per_second |= {3: sec(100, 40), 4: sec(150, 40), 5: sec(150, 40)}
    per_second |= {6: sec(100, 90), 7: sec(100, 600), 8: sec(100, 600)}
    per_second |= {9: sec(100, 900, failures=3), 10: sec(100, 900), 11: sec(100, 900)}
    out = step_knee(per_second, cfg)
    assert [s["users"] for s in out["per_step"]] == [10, 20, 30, 40]
    assert out["knee"] == {"users": 30, "why": "p99 600 ms"}
    assert out["best"] == {"users": 20, "rps": 150.0}


def test_docker_stats_parsing():
    assert parse_size("12.5MiB") == 12.5 * 2**20
    assert parse_size("1.2GB") == 1.2e9
    assert parse_size("junk") == 0.0
    assert parse_percent("153.20%") == 153.2


def test_step_load_report_shows_each_containers_peak(tmp_path: Path):
    """SHAPE=step has no rounds: the container table and the memory budget use its steps."""
    app, dev = "flaskstack_app_1", "flaskstack_devserver_1"
    results = results_with([])
    results["config"]["scenarios"] = ["json"]
    results["config"]["compose_project"] = "flaskstack"
    results["docker"] = {
        "containers": [app, dev],
        "idle": {app: {"mem": 70 * 2**20, "cpu": 0.0}, dev: {"mem": 60 * 2**20, "cpu": 0.0}},
    }
    for target, app_mib in (("stack", 90), ("builtin", 75)):
        results["steps"].append(
            {
                "scenario": "json",
                "target": target,
                "per_step": [{"users": 50, "rps": 700.0, "p50": 60, "p99": 600, "failures": 0}],
                "knee": {"users": 50, "why": "p99 600 ms"},
                "best": None,
                "failures": 0,
                "containers": {
                    app: {"mem": app_mib * 2**20, "cpu": 45.0},
                    dev: {"mem": 62 * 2**20, "cpu": 10.0},
                },
            }
        )
    report.write_report(tmp_path, results)
    text = (tmp_path / "report.md").read_text()
    assert "| json | stack | 90 MiB, 45% | 62 MiB, 10% |" in text
    assert "| json | builtin | 75 MiB, 45% | 62 MiB, 10% |" in text
    assert "under 200 MB at the default load, here 90 MiB at most, under step load" in text
