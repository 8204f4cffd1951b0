"""The server-side p99 from Prometheus (PROMETHEUS_URL) and the monitoring containers' CPU, on a
fake Prometheus on 127.0.0.1 and made-up runs (no stack needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from loadtest import prometheus
from loadtest.report.format import DASH, TIMES
from loadtest.results import Run
from tests.unit.test_loadtest_report import (
    report_lines,
    results_with,
    run,
)


class FakePrometheus:
    """/api/v1/query on 127.0.0.1: answers the count query and the p99 query from `counts` and
    `p99s` (by route), or `status` and `error` for every query; keeps each query's parameters."""

    def __init__(self) -> None:
        self.counts: dict[str, str] = {}
        self.p99s: dict[str, str] = {}
        self.status = 200
        self.error = ""
        self.queries: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.queries.append({"path": url.path, **params})
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(fake.answer(params)).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, params: dict[str, str]) -> dict[str, Any]:
        if self.error:
            return {"status": "error", "errorType": "bad_data", "error": self.error}
        values = self.p99s if "histogram_quantile" in params["query"] else self.counts
        result = [
            {"metric": {"route": route}, "value": [float(params["time"]), value]}
            for route, value in values.items()
        ]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    f = FakePrometheus()
    thread = threading.Thread(target=f.server.serve_forever, daemon=True)
    thread.start()
    yield f
    f.server.shutdown()
    f.server.server_close()


def stack_run(target: str = "stack", start: float = 1000.0, end: float = 1010.4) -> Run:
    """A Run record of the comparison, between two wall-clock times."""
    names = {f.name for f in fields(Run)}
    figures = {k: v for k, v in run("json", target, 1, 100.0).items() if k in names}
    zero = dict.fromkeys(("proxy_cores", "proxy_cpu_s", "engine_cores", "engine_cpu_s"), 0.0)
    return Run(
        **figures,
        **zero,
        other_cores=None,
        users=10,
        locust_exit=0,
        requests=1000,
        failures=0,
        errors={},
        gen_cpu_seconds=1.0,
        container_cpu_s={},
        container_cores={},
        log="json.log",
        prefix=f"json-{target}-r1",
        wall_start=start,
        wall_end=end,
    )


def test_each_stack_run_is_queried_over_its_range_and_routes_under_50_requests_dropped(fake):
    fake.counts = {"/bench/json": "1234.4", "/healthz": "49.9", "unmatched": "50"}
    fake.p99s = {"/bench/json": "0.012345", "/healthz": "0.001", "unmatched": "NaN"}
    runs = [stack_run(), stack_run("builtin")]
    notes: list[str] = []
    slept: list[float] = []
    prometheus.add_server_latency(fake.url, runs, notes, log=lambda _: None, sleep=slept.append)

    assert notes == [] and slept == []  # the run ended long ago: nothing to wait for
    assert [q["path"] for q in fake.queries] == ["/api/v1/query"] * 2  # the stack's run only
    # The counters one scrape interval after the end, less what they were at the start.
    assert {q["time"] for q in fake.queries} == {"1016.400"}
    requests_then = "sum by (route) (flaskstack_http_requests_total @ {})"
    assert fake.queries[0]["query"] == (
        f"({requests_then.format('1016.400')} - ({requests_then.format('1000.000')} "
        f"or {requests_then.format('1016.400')} * 0))"
    )
    buckets_then = "sum by (route, le) (flaskstack_http_request_duration_seconds_bucket @ {})"
    assert fake.queries[1]["query"] == (
        f"histogram_quantile(0.99, ({buckets_then.format('1016.400')} - "
        f"({buckets_then.format('1000.000')} or {buckets_then.format('1016.400')} * 0)))"
    )
    stack, builtin = runs
    assert stack.server_requests == {"/bench/json": 1234, "unmatched": 50}
    assert stack.server_p99_ms == {"/bench/json": 12.35, "unmatched": None}
    assert builtin.server_p99_ms is None and "server_p99_ms" not in builtin.to_json()
    assert stack.to_json()["server_requests"] == {"/bench/json": 1234, "unmatched": 50}


def test_waits_until_the_last_run_of_the_stack_has_been_scraped(fake):
    fake.counts = {"/bench/json": "10"}  # under 50: said in a note
    now = time.time()
    notes: list[str] = []
    slept: list[float] = []
    runs = [stack_run(start=now - 10, end=now)]
    prometheus.add_server_latency(fake.url, runs, notes, log=lambda _: None, sleep=slept.append)
    assert len(slept) == 1 and 5.0 < slept[0] <= prometheus.SCRAPE_WAIT_S
    assert runs[0].server_requests == {}
    assert notes == [
        f"Prometheus at {fake.url}: no route had 50 requests in json-stack-r1 "
        "(is it the stack's Prometheus?)"
    ]


def test_without_a_url_nothing_is_asked(fake):
    runs = [stack_run()]
    prometheus.add_server_latency("", runs, [], log=lambda _: None)
    assert fake.queries == [] and runs[0].server_p99_ms is None


def test_an_error_from_prometheus_becomes_a_note_and_stops_the_queries(fake):
    fake.status, fake.error = 400, "parse error at char 5"
    runs = [stack_run(), stack_run(start=1020.0, end=1030.0)]
    notes: list[str] = []
    prometheus.add_server_latency(fake.url, runs, notes, log=lambda _: None)
    assert len(fake.queries) == 1
    assert notes == [
        f"Prometheus at {fake.url} gave no server-side figures "
        "(2 runs of the stack from json-stack-r1 on): parse error at char 5"
    ]
    assert all(r.server_p99_ms is None for r in runs)


def test_no_prometheus_listening_becomes_a_note():
    with socket.socket() as s:  # a free port, closed again: nothing listens on it
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    notes: list[str] = []
    prometheus.add_server_latency(url, [stack_run()], notes, log=lambda _: None)
    assert len(notes) == 1
    assert notes[0].startswith(f"Prometheus at {url} gave no server-side figures (1 run of")


def with_server_figures(r: dict[str, Any], seconds: float, p99: dict[str, float]) -> dict:
    """A run dict as results.json holds it after the Prometheus queries."""
    r.update(wall_start=1000.0, wall_end=1000.0 + seconds, server_p99_ms=p99)
    r["server_requests"] = dict.fromkeys(p99, 600)
    return r


def test_report_section_per_scenario_and_route(tmp_path: Path):
    runs = [
        with_server_figures(run("json", "stack", 1, 100, p99=30.0), 12, {"/bench/json": 11.0}),
        with_server_figures(run("json", "stack", 2, 100, p99=40.0), 12, {"/bench/json": 14.0}),
        with_server_figures(run("json", "stack", 3, 100, p99=50.0), 12, {"/bench/json": 12.5}),
        run("json", "builtin", 1, 40, p99=90.0),
        with_server_figures(
            run("api", "stack", 1, 50, p99=70.0), 12, {"/api/posts": 20.0, "/api/posts/<id>": 8.0}
        ),
    ]
    lines = report_lines(tmp_path, results_with(runs))
    assert "## Server-side latency (Prometheus)" in lines
    header = "| scenario | route | requests per run | server p99 ms | Locust p99 ms |"
    rows = lines[lines.index(header) + 2 : lines.index(header) + 6]
    assert rows == [
        "| api | /api/posts | 600 | 20.0 | 70 |",
        "| api | /api/posts/<id> | 600 | 8.0 | 70 |",
        f"| json | /bench/json | 600 | 12.5 (11.0{DASH}14.0) | 40 |",
        "",
    ]
    assert not any(line.startswith("> Short runs") for line in lines)

    runs = [with_server_figures(run("json", "stack", 1, 100), 6.5, {"/bench/json": 11.0})]
    lines = report_lines(tmp_path, results_with(runs))
    assert "| json | /bench/json | 600 | 11.0 | 10 |" in lines
    short = next(line for line in lines if line.startswith("> Short runs"))
    assert "(the shortest 6.5 s)" in short and "approximate" in short


def test_old_results_without_the_new_fields_render_without_the_section(tmp_path: Path):
    results = results_with([run("json", "stack", 1, 100), run("json", "builtin", 1, 40)])
    del results["config"]["prometheus_url"]  # results.json from before PROMETHEUS_URL
    lines = report_lines(tmp_path, results)
    assert f"| json | stack | 100 | 1 | 5 | 10 | 0 | 2.50{TIMES} |  |" in lines
    assert not any("Prometheus" in line for line in lines)
