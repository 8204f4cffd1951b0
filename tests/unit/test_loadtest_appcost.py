"""The app's own cost and the hosting overhead: the environ appcall.py builds, its calls into
the demo app, and the report's arithmetic (no stack needed, nothing timed)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Request
from tornado.httputil import HTTPHeaders, RequestStartLine

from flaskstack.wsgi import WSGIExchange
from loadtest import appcall
from loadtest.appcost import parse, per_call_ms
from loadtest.report import summary
from loadtest.report.format import DASH
from tests.unit.test_loadtest_report import cpu_results, measured, report_lines

# What nginx sets on the way to a replica (deploy/nginx/snippets/proxy.conf) and Locust sends.
FORWARDED = {
    "Host": "127.0.0.1:8080",
    "X-Real-Ip": "127.0.0.1",
    "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "http",
    "X-Scheme": "http",
    "User-Agent": "python/gevent-http-client",
    "Accept-Encoding": "gzip, deflate, br",
}


def host_environ(method: str, target: str, headers: dict[str, str], body: bytes) -> dict:
    """The environ the Tornado host builds for the same request (flaskstack.wsgi)."""
    connection = SimpleNamespace(context=SimpleNamespace(protocol="http", remote_ip="127.0.0.1"))
    exchange = WSGIExchange(None, None, connection)  # type: ignore[arg-type]
    exchange.start_line = RequestStartLine(method, target, "HTTP/1.1")
    exchange.headers = HTTPHeaders(headers)
    exchange.chunks = [body]
    return exchange.environ()


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        ("GET", "/bench/queries?queries=20", {}, b""),
        ("GET", "/api/posts/caf%C3%A9", {}, b""),
        (
            "POST",
            "/api/posts",
            {"Content-Type": "application/json", "Authorization": "Bearer t"},
            b'{"title": "t"}',
        ),
    ],
)
def test_the_environ_is_the_one_the_host_builds(method, target, headers, body):
    mine = appcall.build_environ(method, target, headers, body)
    sent = {**FORWARDED, "X-Request-Id": mine["HTTP_X_REQUEST_ID"], **headers}
    if body:
        sent["Content-Length"] = str(len(body))
    host = host_environ(method, target, sent, body)
    assert mine.pop("wsgi.input").read() == host.pop("wsgi.input").read() == body
    assert mine == host


def test_the_environ_carries_a_multipart_upload_flask_can_read():
    content = b"loadtest\n" * 64
    body, content_type = appcall.multipart("file", "notes.txt", content, "text/plain")
    environ = appcall.build_environ(
        "POST",
        "/api/uploads?x=1",
        {"Content-Type": content_type, "Authorization": "Bearer t"},
        body,
    )
    request = Request(environ)
    assert (request.method, request.path, request.args["x"]) == ("POST", "/api/uploads", "1")
    assert request.headers["Authorization"] == "Bearer t"
    assert request.files["file"].filename == "notes.txt"
    assert request.files["file"].read() == content
    request.close()
    # A fresh request id each time, as nginx's $req_id.
    assert appcall.build_environ("GET", "/")["HTTP_X_REQUEST_ID"] != request.headers["X-Request-Id"]


@pytest.mark.parametrize("scenario", [*appcall.PATHS, "api"])
def test_every_scenario_answers_in_process(app_factory, scenario):
    app = app_factory()
    plan = appcall.plan_for(scenario)
    if isinstance(plan, appcall.ApiMix):
        plan.rng = random.Random(3)
    out = appcall.measure(app, plan, warmup=2, max_calls=40, seconds=0, min_calls=40)
    assert out["calls"] == 40
    assert all(200 <= int(status) < 300 for status in out["statuses"]), out["statuses"]
    if scenario == "api":  # the mix reads, creates and uploads, signed in
        assert {"200", "201"} <= out["statuses"].keys()


def test_an_unknown_scenario_has_no_plan():
    with pytest.raises(KeyError):
        appcall.plan_for("PageUser")


def test_the_result_line_is_found_among_the_apps_log_lines():
    out = {"calls": 400, "cpu_s": 0.1, "wall_s": 0.4, "statuses": {"200": 400}}
    stdout = '{"level": "INFO", "msg": "app created"}\n' + appcall.MARK + json.dumps(out) + "\n"
    cost = parse(stdout, "", "flaskstack_app_1")
    assert (cost.container, cost.calls, cost.ms) == ("flaskstack_app_1", 400, 0.25)
    failed = parse("", "Traceback ...\nModuleNotFoundError: No module named 'app'\n", "c")
    assert failed.error == "ModuleNotFoundError: No module named 'app'" and failed.ms is None
    assert per_call_ms(0.0, 0) is None


def test_hosting_overhead_is_the_servers_cpu_per_request_less_the_apps_own(tmp_path: Path):
    # 1,000 requests a run: the replicas' 0.3, 0.4 and 0.5 CPU seconds are 0.3-0.5 ms each.
    runs = [
        measured("json", "stack", rnd, 100, {"nginx": 0.1, "app": app_s, "postgres": 0.05})
        for rnd, app_s in ((1, 0.3), (2, 0.5), (3, 0.4))
    ]
    runs += [measured("json", "builtin", 1, 40, {"devserver": 0.6, "postgres": 0.04})]
    runs += [measured("db", "stack", 1, 100, {"nginx": 0.1, "app": 0.4, "postgres": 0.2})]
    results = cpu_results(runs)
    results["config"]["scenarios"] = ["json", "db"]
    results["app_cost"] = {
        "json": {"container": "app_1", "calls": 1000, "cpu_s": 0.12, "ms": 0.12},
        "db": {"container": "app_1", "error": "docker exec failed"},
    }
    s = summary.summarize(results)
    stack = s["json"]["stack"]
    assert stack["app_ms"] == 0.12
    assert [round(v, 6) for v in stack["overhead_ms"]] == [0.28, 0.18, 0.38]
    # The built-in server's overhead is the devserver's CPU less the same app cost.
    assert round(s["json"]["builtin"]["overhead_ms"][0], 6) == 0.48
    assert s["db"]["stack"]["app_ms"] is None and s["db"]["stack"]["overhead_ms"] is None

    lines = report_lines(tmp_path, results)
    header = (
        "| scenario | target | nginx | Python server | app in-process | hosting overhead "
        "| Postgres | containers | docker-proxy | docker engine |"
    )
    assert header in lines
    assert (
        f"| json | stack | 0.10 | 0.40 (0.30{DASH}0.50) | 0.12 | 0.28 (0.18{DASH}0.38) "
        f"| 0.05 | 0.55 (0.45{DASH}0.65) | 0.08 | 0.04 |"
    ) in lines
    assert f"| json | builtin | {DASH} | 0.60 | 0.12 | 0.48 | 0.04 | 0.64 | 0.08 | 0.04 |" in lines
    assert f"| db | stack | 0.10 | 0.40 | {DASH} | {DASH} | 0.20 | 0.70 | 0.08 | 0.04 |" in lines
    assert any(line.startswith("*app in-process*: ") for line in lines)


def test_no_app_cost_columns_when_it_was_not_measured(tmp_path: Path):
    cpu = {"nginx": 0.1, "app": 0.3, "postgres": 0.05}
    lines = report_lines(tmp_path, cpu_results([measured("json", "stack", 1, 100, cpu)]))
    assert "| json | stack | 0.10 | 0.30 | 0.05 | 0.45 | 0.08 | 0.04 |" in lines
    assert not any("in-process" in line for line in lines)
