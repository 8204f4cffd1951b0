"""`make loadtest` end to end, in its smoke form: every scenario, both targets, a few seconds each.

Checks that the runner works, not how fast anything is (benchmarks are not tests).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from loadtest.config import SCENARIOS
from tests import support

TARGETS = ("stack", "builtin")


@pytest.fixture(scope="module")
def smoke_run(stack_url, baseline_url, tmp_path_factory):
    """Run the smoke comparison once; return (results dir, results.json, console output)."""
    results_dir = tmp_path_factory.mktemp("loadtest")
    env = {
        **os.environ,
        "SMOKE": "1",
        "STACK_URL": stack_url,
        "BASELINE_URL": baseline_url,
        "RESULTS_DIR": str(results_dir),
    }
    for name in ("SCENARIOS", "USERS", "DURATION", "ROUNDS", "WARMUP", "REFERENCE", "SHAPE"):
        env.pop(name, None)
    proc = support.run(sys.executable, "-m", "loadtest.run", env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    results = json.loads((out_dir / "results.json").read_text())
    return out_dir, results, proc.stdout


def test_every_scenario_ran_against_both_targets(smoke_run):
    _, results, _ = smoke_run
    ran = {(r["scenario"], r["target"]) for r in results["runs"]}
    assert ran == {(s, t) for s in SCENARIOS for t in TARGETS}
    for run in results["runs"]:
        assert not run.get("error"), run
        assert run["requests"] > 0, run
        assert run["rps"] > 0 and run["p50"] is not None and run["p99"] is not None, run


def test_no_request_failed_on_either_target(smoke_run):
    _, results, _ = smoke_run
    runs = results["runs"]
    failed = {f"{r['scenario']}/{r['target']}": r["errors"] for r in runs if r["failures_total"]}
    assert not failed


def test_locust_csv_and_html_written_per_run(smoke_run):
    out_dir, results, _ = smoke_run
    for run in results["runs"]:
        prefix = out_dir / run["prefix"]
        assert Path(f"{prefix}.html").stat().st_size > 0
        with open(f"{prefix}_stats.csv") as fh:
            rows = {row["Name"]: row for row in csv.DictReader(fh)}
        assert int(rows["Aggregated"]["Request Count"]) > 0


def test_generator_ceiling_measured(smoke_run):
    _, results, _ = smoke_run
    assert results["ceiling"].get("rps", {}).get("1", 0) > 0, results["ceiling"]


def test_report_table_complete(smoke_run):
    out_dir, _, stdout = smoke_run
    report = (out_dir / "report.md").read_text()
    # The results table is the first one under "## Results"; later tables have other columns.
    results = report.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in results.splitlines() if line.startswith("| ")]
    table = {(c[0].strip(), c[1].strip()): [x.strip() for x in c] for c in rows if len(c) == 9}
    for scenario in SCENARIOS:
        for target in TARGETS:
            cells = table[(scenario, target)]
            rps, p50, p95, p99, failures, ratio = cells[2:8]
            assert float(rps.split()[0].replace(",", "")) > 0, cells
            # Percentiles of real requests: in order, and not all zero.
            p = [float(x.replace(",", "")) for x in (p50, p95, p99)]
            assert 0 <= p[0] <= p[1] <= p[2] and p[2] > 0, cells
            assert failures == "0", cells
            if target == "stack":
                assert ratio.endswith("\u00d7"), cells
    for chart in ("throughput.png", "latency.png"):
        assert (out_dir / chart).read_bytes().startswith(b"\x89PNG")
    # The console ends with the same table.
    tail = stdout.strip().splitlines()[-(2 + 2 * len(SCENARIOS)) :]
    assert tail[0].split()[:3] == ["scenario", "target", "requests/s"]
    assert len(tail) == 2 + 2 * len(SCENARIOS)


def test_realtime_scenario_delivered_every_event(smoke_run):
    out_dir, results, _ = smoke_run
    rt = results["realtime"]
    assert rt["connected"] == rt["clients"] > 0, rt
    assert rt["posts"] > 0 and not rt["post_failures"], rt
    assert rt["delivered"] == rt["expected"] == rt["clients"] * rt["posts"], rt
    assert set(rt["per_replica"]) == set(rt["memory"]), rt  # every replica's memory was read
    assert "## Realtime" in (out_dir / "report.md").read_text()
