"""The load-test report's arithmetic and the cgroup readings, on made-up runs and files
(no stack needed, nothing timed)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from loadtest import report, stats
from loadtest.cgroups import Cgroups, ContainerSampler, Throttling
from loadtest.config import parse_config
from loadtest.report import summary, tables
from loadtest.report.format import DASH, TIMES
from loadtest.steps import step_knee
from loadtest.window import _bucket, _Tally


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


def results_with(runs, ceiling=None, cfg=None):
    """A results.json document of `runs`; its config `cfg`, else the defaults with the runs'
    scenarios."""
    if cfg is None:
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
    merged = stats.merge_times(
        [
            {"requests": 2, "failures": 0, "times": {"1": 1, "10": 1}},
            {"requests": 2, "failures": 1, "times": {"10": 1, "100": 1}},
        ]
    )
    assert merged["requests"] == 4 and merged["failures"] == 1
    assert stats.percentile(merged["times"], 0.5) == 10
    assert stats.percentile(merged["times"], 0.99) == 100
    assert stats.percentile({}, 0.5) is None


def test_percentiles_and_buckets_follow_locusts_own_rule():
    """report.md and Locust's HTML in the same folder give the same p50..p999, to the bucket."""
    rng = random.Random(7)
    trials = [[rng.lognormvariate(3, 1.2) for _ in range(rng.randint(1, 3000))] for _ in range(100)]
    # Locust monkey-patches the process with gevent when imported: ask it in a process of its own.
    locust = subprocess.run(
        [sys.executable, "-c", LOCUST_RULE],
        input=json.dumps({"trials": trials, "qs": QS}),
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(locust.stdout)
    for samples, (buckets, percentiles) in zip(trials, expected, strict=True):
        assert [_bucket(ms) for ms in samples] == buckets
        times: dict[int, int] = {}
        for ms in buckets:
            times[ms] = times.get(ms, 0) + 1
        assert [stats.percentile(times, q) for q in QS] == percentiles


def test_the_windows_counts_give_the_percentiles_locusts_stats_give_for_the_same_requests():
    """The whole path, per-process counts to report.md: each Locust process's window tally,
    written as measure-*.json and added up by the runner, against Locust's own RequestStats
    (what its HTML and CSV print) fed the same requests, two names and some failures."""
    rng = random.Random(11)
    trials = []
    for _ in range(40):
        n = rng.randint(1, 4000)
        trials.append(
            [
                [rng.lognormvariate(3.5, 1.0), rng.random() < 0.02, rng.randrange(3)]
                for _ in range(n)
            ]
        )
    locust = subprocess.run(
        [sys.executable, "-c", LOCUST_STATS],
        input=json.dumps({"trials": trials, "qs": QS}),
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(locust.stdout)
    for requests, locust_percentiles in zip(trials, expected, strict=True):
        processes = [_Tally() for _ in range(3)]
        for ms, failed, process in requests:
            processes[process].add(ms, failed)
        written = [json.loads(json.dumps(t.dump())) for t in processes]  # measure-*.json
        window = stats.merge_times(written)
        assert window["requests"] == len(requests)
        assert [stats.percentile(window["times"], q) for q in QS] == locust_percentiles


LOCUST_STATS = """
import json, sys
from locust.stats import RequestStats
job = json.load(sys.stdin)
out = []
for requests in job["trials"]:
    stats = RequestStats()
    for i, (ms, failed, _process) in enumerate(requests):
        name = "/bench/json" if i % 2 else "/api/posts"
        stats.log_request("GET", name, ms, 0)
        if failed:
            stats.log_error("GET", name, "failed")
    out.append([stats.total.get_response_time_percentile(q) for q in job["qs"]])
print(json.dumps(out))
"""
QS = [0.5, 0.9, 0.95, 0.99, 0.999]
LOCUST_RULE = """
import json, sys
from locust.stats import bucket_response_time, calculate_response_time_percentile
job = json.load(sys.stdin)
out = []
for samples in job["trials"]:
    buckets = [bucket_response_time(ms) for ms in samples]
    times = {}
    for ms in buckets:
        times[ms] = times.get(ms, 0) + 1
    out.append([buckets, [calculate_response_time_percentile(times, len(buckets), q)
                          for q in job["qs"]]])
print(json.dumps(out))
"""


def test_ratio_is_paired_by_round_and_summarised_as_median_min_max():
    runs = [
        run("json", "stack", 1, 3000),
        run("json", "builtin", 1, 1000),
        run("json", "stack", 2, 2000),
        run("json", "builtin", 2, 1000),
        run("json", "stack", 3, 2000),
        run("json", "builtin", 3, 500),
    ]
    s = summary.summarize(results_with(runs))["json"]
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
    s = summary.summarize(results)["plaintext"]
    assert s["stack"]["generator_limited_rounds"] == [1]
    assert s["builtin"]["generator_limited_rounds"] == []
    rows = tables.table_rows(results, summary.summarize(results))
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


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_cgroup_v1_memory_and_cpu_as_docker_stats_counts_them(tmp_path: Path):
    """v1: a tree per controller; memory is usage_in_bytes less total_inactive_file."""
    cid = "a" * 64
    write_files(
        tmp_path / "memory" / "docker" / cid,
        {
            "memory.usage_in_bytes": f"{100 * 2**20}\n",
            "memory.stat": f"cache 9\ninactive_file 1\ntotal_inactive_file {4 * 2**20}\n",
        },
    )
    write_files(tmp_path / "cpuacct" / "docker" / cid, {"cpuacct.usage": "2500000000\n"})
    cgroups = Cgroups({"p_app_1": (cid, "app"), "p_gone_1": ("b" * 64, "gone")}, root=tmp_path)
    assert list(cgroups.groups) == ["p_app_1"]
    assert cgroups.services == {"p_app_1": "app", "p_gone_1": "gone"}
    assert cgroups.memory() == {"p_app_1": 96 * 2**20}
    assert cgroups.cpu_seconds() == {"p_app_1": 2.5}


def test_cgroup_cpu_quota_throttling_v1_and_v2(tmp_path: Path):
    """The CPU controller's cpu.stat: v1 in cpu/docker/<id> (time in ns), v2 beside the rest
    (time in µs); readings subtract to a window's."""
    v1, v2 = "e" * 64, "f" * 64
    write_files(tmp_path / "cpuacct" / "docker" / v1, {"cpuacct.usage": "1\n"})
    write_files(
        tmp_path / "cpu" / "docker" / v1,
        {"cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 2000000000\n"},
    )
    write_files(
        tmp_path / "docker" / v2,
        {"cpu.stat": "usage_usec 1\nnr_periods 7\nnr_throttled 1\nthrottled_usec 500000\n"},
    )
    cgroups = Cgroups({"a": (v1, "app"), "b": (v2, "app")}, root=tmp_path)
    got = cgroups.throttling()
    assert got == {"a": Throttling(10, 4, 2.0), "b": Throttling(7, 1, 0.5)}
    assert got["a"] - Throttling(4, 1, 0.5) == Throttling(6, 3, 1.5)


def test_cgroup_v2_memory_and_cpu_under_either_driver(tmp_path: Path):
    """v2: one tree, systemd's docker-<id>.scope or cgroupfs's docker/<id>; memory.current
    less inactive_file, and the whole usage when the cache is not below it."""
    systemd, cgroupfs = "c" * 64, "d" * 64
    write_files(
        tmp_path / "system.slice" / f"docker-{systemd}.scope",
        {
            "memory.current": f"{50 * 2**20}\n",
            "memory.stat": f"anon 1\ninactive_file {2 * 2**20}\n",
            "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\n",
        },
    )
    write_files(
        tmp_path / "docker" / cgroupfs,
        {
            "memory.current": "4096\n",
            "memory.stat": "inactive_file 8192\n",
            "cpu.stat": "usage_usec 250000\n",
        },
    )
    cgroups = Cgroups({"db": (systemd, "postgres"), "web": (cgroupfs, "nginx")}, root=tmp_path)
    assert cgroups.memory() == {"db": 48 * 2**20, "web": 4096}
    assert cgroups.cpu_seconds() == {"db": 1.5, "web": 0.25}

    # The sampler keeps each container's peak; entering and leaving each read once.
    with ContainerSampler(cgroups, interval=3600) as sampler:
        (tmp_path / "docker" / cgroupfs / "memory.current").write_text(f"{2**20 + 8192}\n")
    assert sampler.samples == 2
    assert sampler.peaks["web"]["mem"] == 2**20
    assert sampler.peaks["db"]["mem"] == 48 * 2**20


PROJECT = "flaskstack"
SERVICES = {
    f"{PROJECT}_nginx_1": "nginx",
    f"{PROJECT}_app_1": "app",
    f"{PROJECT}_app_2": "app",
    f"{PROJECT}_postgres_1": "postgres",
    f"{PROJECT}_devserver_1": "devserver",
    f"{PROJECT}_ref-gunicorn_1": "ref-gunicorn",
}


def measured(scenario, target, rnd, rps, cpu_s, proxy_s=0.08, engine_s=0.04):
    """A run that served 1,000 requests, so 0.1 CPU seconds is 0.1 ms per request; `cpu_s`
    is per compose service, shared out among its containers."""
    r = run(scenario, target, rnd, rps)
    r["requests_total"] = 1000
    replicas = {svc: sum(s == svc for s in SERVICES.values()) for svc in SERVICES.values()}
    r["container_cpu_s"] = {n: cpu_s.get(svc, 0.0) / replicas[svc] for n, svc in SERVICES.items()}
    r["container_cores"] = {n: v / 10 for n, v in r["container_cpu_s"].items()}
    r.update(proxy_cpu_s=proxy_s, engine_cpu_s=engine_s, proxy_cores=0.01, engine_cores=0.004)
    return r


def cpu_results(runs, reference=False):
    results = results_with(runs)
    results["config"]["compose_project"] = PROJECT
    results["docker"] = {"containers": sorted(SERVICES), "services": SERVICES}
    if reference:
        results["targets"].append({"name": "gunicorn", "url": "http://g", "description": "g"})
    return results


def report_lines(tmp_path: Path, results) -> list[str]:
    report.write_report(tmp_path, results)
    return (tmp_path / "report.md").read_text().splitlines()


def test_cpu_per_request_by_component_matches_the_containers_figure(tmp_path: Path):
    # Containers off a target's path (nginx and the replicas, for the built-in server) idle
    # and do not count for it.
    stack_cpu = {"nginx": 0.1, "app": 0.3, "postgres": 0.05, "devserver": 0.02}
    builtin_cpu = {"nginx": 0.2, "app": 0.02, "postgres": 0.04, "devserver": 0.4}
    runs = [
        measured("json", "stack", 1, 100, stack_cpu),
        measured("json", "builtin", 1, 40, builtin_cpu, proxy_s=0.04, engine_s=0.02),
    ]
    results = cpu_results(runs)
    s = summary.summarize(results)["json"]
    assert {k: round(v[0], 6) for k, v in s["stack"]["cpu_ms"].items()} == {
        "nginx": 0.1,
        "server": 0.3,
        "postgres": 0.05,
        "containers": 0.45,
        "proxy": 0.08,
        "engine": 0.04,
    }
    assert "nginx" not in s["builtin"]["cpu_ms"]

    runs[0]["containers_unread"] = [f"{PROJECT}_app_2"]  # recreated mid-run: flagged
    lines = report_lines(tmp_path, results)
    result = next(line for line in lines if line.startswith("| json | stack | 100 |"))
    assert result.endswith("| CPU not read: app_2 (gone or recreated during the run) |")
    assert "## Where a request's CPU goes" in lines
    assert "| json | stack | 0.10 | 0.30 | 0.05 | 0.45 | 0.08 | 0.04 |" in lines
    assert f"| json | builtin | {DASH} | 0.40 | 0.04 | 0.44 | 0.04 | 0.02 |" in lines
    # The load generator table's per-request column is the same containers' total.
    generator = [line for line in lines if line.startswith("| json | stack | 1 | 0.50 |")]
    assert len(generator) == 1 and generator[0].endswith("| 0.45 | 90 |")


MONITORING = {
    f"{PROJECT}_prometheus_1": "prometheus",
    f"{PROJECT}_nginx-exporter_1": "nginx-exporter",
    f"{PROJECT}_postgres-exporter_1": "postgres-exporter",
}


def test_monitoring_is_a_component_of_the_stack_when_its_containers_ran(tmp_path: Path):
    cpu = {"nginx": 0.1, "app": 0.3, "postgres": 0.05, "devserver": 0.02}
    runs = [measured("json", "stack", 1, 100, cpu), measured("json", "builtin", 1, 40, cpu)]
    # Prometheus and its exporters: 0.03, 0.01 and 0.02 CPU seconds over 1,000 requests.
    for r in runs:
        r["container_cpu_s"].update(zip(MONITORING, (0.03, 0.01, 0.02), strict=True))
    results = cpu_results(runs)
    results["docker"]["services"] = {**SERVICES, **MONITORING}
    lines = report_lines(tmp_path, results)
    header = (
        "| scenario | target | nginx | Python server | Postgres | monitoring | containers "
        "| docker-proxy | docker engine |"
    )
    assert header in lines
    # The stack's total includes it; the built-in server's path has no monitoring.
    assert "| json | stack | 0.10 | 0.30 | 0.05 | 0.06 | 0.51 | 0.08 | 0.04 |" in lines
    assert f"| json | builtin | {DASH} | 0.02 | 0.05 | {DASH} | 0.07 | 0.08 | 0.04 |" in lines
    assert any(line.startswith("CPU ms per request") and "*monitoring*" in line for line in lines)


def test_no_monitoring_column_without_its_containers(tmp_path: Path):
    cpu = {"nginx": 0.1, "app": 0.3, "postgres": 0.05}
    lines = report_lines(tmp_path, cpu_results([measured("json", "stack", 1, 100, cpu)]))
    assert "| json | stack | 0.10 | 0.30 | 0.05 | 0.45 | 0.08 | 0.04 |" in lines
    assert not any("monitoring" in line for line in lines)


def test_cpu_budgets_met_and_missed_name_the_largest_component(tmp_path: Path):
    cheap = {"nginx": 0.1, "app": 0.3, "postgres": 0.05}  # 0.45 ms per request
    costly = {"nginx": 0.1, "app": 0.5, "postgres": 0.1}  # 0.70 ms per request
    builtin = {"devserver": 1.0, "postgres": 0.1}  # 1.10 ms per request
    runs = [
        measured("json", "stack", 1, 100, cheap),
        measured("json", "builtin", 1, 30, builtin),
        measured("plaintext", "stack", 1, 100, costly),
        measured("plaintext", "builtin", 1, 30, builtin),
    ]
    lines = report_lines(tmp_path, cpu_results(runs))
    assert "## Against the budgets" in lines
    rows = {tuple(line.split(" | ")[:2]): line for line in lines if " | " in line}
    assert rows["| json", "CPU per request ≤ 0.55 ms"].endswith("| 0.45 ms | met |  |")
    assert rows["| json", f"CPU per request ≤ 0.6{TIMES} built-in"].endswith(
        f"| 0.45 vs 1.10 ms (0.41{TIMES}) | met |  |"
    )
    assert rows["| json", f"requests/s ≥ 3{TIMES} built-in"].endswith(f"| 3.33{TIMES} | met |  |")
    assert rows["| plaintext", "CPU per request ≤ 0.55 ms"].endswith(
        "| 0.70 ms | MISSED | largest CPU per request: app 0.50 ms; "
        "containers 0.70 ms (stack) vs 1.10 ms (built-in); server cores 0.07 vs 0.11; "
        "machine 90% busy |"
    )
    share = rows["| plaintext", f"CPU per request ≤ 0.6{TIMES} built-in"]
    assert f"| 0.70 vs 1.10 ms (0.64{TIMES}) | MISSED | largest CPU per request: app" in share
    p99 = rows["| json", "p99 below built-in, no failed request"]
    assert "| p99 10 vs 10 ms, 0 failed | MISSED |" in p99  # equal is not below
    text = "\n".join(lines)
    assert "≥ gunicorn" not in text  # without REFERENCE=1 there is nothing to compare it with
    for gone in ("issue", "DESIGN.md", "session"):
        assert gone not in text


def test_gunicorn_budget_met_and_missed(tmp_path: Path):
    cpu = {"nginx": 0.1, "app": 0.3, "postgres": 0.05}
    gunicorn = {"nginx": 0.1, "ref-gunicorn": 0.2, "postgres": 0.05}
    runs = [
        measured("json", "stack", 1, 100, cpu),
        measured("json", "builtin", 1, 30, cpu),
        measured("json", "gunicorn", 1, 90, gunicorn),
        measured("db", "stack", 1, 100, cpu),
        measured("db", "builtin", 1, 30, cpu),
        measured("db", "gunicorn", 1, 125, gunicorn),
    ]
    lines = report_lines(tmp_path, cpu_results(runs, reference=True))
    assert (
        f"| json | requests/s ≥ gunicorn gthread | 1.11{TIMES} (100 vs 90 requests/s) | met |  |"
        in lines
    )
    missed = next(line for line in lines if line.startswith("| db | requests/s ≥ gunicorn"))
    assert missed.startswith(
        f"| db | requests/s ≥ gunicorn gthread | 0.80{TIMES} (100 vs 125 requests/s) | MISSED | "
        "largest CPU per request: app 0.30 ms; containers 0.45 ms (stack) vs 0.35 ms (gunicorn)"
    )
    assert "| db | gunicorn | 0.10 | 0.20 | 0.05 | 0.35 | 0.08 | 0.04 |" in lines


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
    assert "| all | an app replica under 120 MB idle | 73 MB at most | met |" in text
    assert (
        "| all | an app replica under 200 MB at the default load | 94 MB at most, under step load"
    ) in text


def test_realtime_figures_and_their_report_section(tmp_path: Path):
    from collections import Counter

    from loadtest.realtime import summarize

    created = {1: 100.0, 2: 101.0}
    receipts = [
        ("ws", "r1", 1, 100.010),
        ("ws", "r1", 2, 101.020),
        ("socket.io", "r2", 1, 100.030),
        ("socket.io", "r2", 2, 101.040),
        ("ws", "r1", 99, 101.0),  # not one of the run's posts: ignored
    ]
    memory = {
        "r1": {
            "connections": 1,
            "before_mib": 80.0,
            "after_mib": 81.0,
            "kib_per_connection": 1024.0,
        }
    }
    figures = summarize(
        2,
        Counter({"r1": 1, "r2": 1}),
        [],
        ["ws", "sio"],
        created,
        [],
        2.0,
        receipts,
        memory,
        {"without": [100.0, 120.0], "with": [99.0]},
        source="notify",
        seconds=2.0,
        window={
            "window_s": 5.0,
            "machine_busy": 0.5,
            "cpu_s": {"replicas": 0.004, "nginx": 0.002, "clients": 0.008, "other work": 0.1},
            "throttling": {"r1": {"periods": 50, "throttled": 3, "throttled_s": 0.12}},
        },
        lags=[1.0, 2.0, 30.0],
    )
    assert (figures["expected"], figures["delivered"]) == (4, 4)
    assert figures["by_kind"]["ws"]["p99_ms"] == 20.0
    assert figures["p50_ms"] == 20.0 and figures["p99_ms"] == 40.0
    assert figures["json_rps_without"] == 110.0
    results = results_with([run("json", "stack", 1, 100.0), run("json", "builtin", 1, 50.0)])
    results["realtime"] = figures
    text = "\n".join(report_lines(tmp_path, results))
    assert "## Realtime" in text
    assert "| ws | 2 ÷ 2 (100.00%) | 1 | 10 | 20 | 20 |" in text
    # CPU per delivered message: 4 ms of replica CPU over 4 deliveries; other work is the rest
    # of the machine, never the largest component.
    assert figures["us_per_message"]["replicas"] == 1000.0
    assert figures["server_us_per_message"] == 1500.0
    assert figures["largest"] == "clients"
    assert figures["client_lag_ms"] == {"p50": 2.0, "p99": 30.0, "max": 30.0}
    assert "| replicas | 0.00 | 0.00 | 1,000.0 |" in text
    assert "| server (replicas, nginx, Postgres) | 0.01 | \u2013 | 1,500.0 |" in text
    assert "Largest component per delivered message: **clients, 2,000.0 µs" in text
    assert "| r1 | 50 | 3 | 0.12 |" in text
    assert "`pg_notify`" in text
    assert "no websocket" in text
    assert "-10.0%" in text
