"""Your own app on the stack, the way a user adapts it: examples/hello as APP_MODULE, its
static folder shared with nginx through APP_STATIC_DIR, the baseline serving the same app, and
its own locustfile through `make loadtest`'s runner.

The stack here is a small one of its own (project <PROJECT>-hello, one replica, the baseline
on), started with `stack.sh up` as `make up` does, with examples/hello mounted into the app
containers by an override file (COMPOSE_EXTRA_FILES) instead of copied into the image.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import requests

from tests.support import ROOT, free_port, run, stack

EXAMPLE = ROOT / "examples" / "hello"
CSS = (EXAMPLE / "static" / "hello.css").read_bytes()


@pytest.fixture(scope="module")
def hello_stack(tmp_path_factory):
    """The stack serving examples/hello; yields its URLs and the env that names it."""
    workdir = tmp_path_factory.mktemp("hello")
    override = workdir / "hello.yml"
    mount = f'["{EXAMPLE}:/srv/examples:ro"]'
    override.write_text(
        "services:\n"
        f"  static: {{volumes: {mount}}}\n"
        f"  app: {{volumes: {mount}, environment: {{PYTHONPATH: /srv/examples}}}}\n"
        f"  devserver: {{volumes: {mount}, environment: {{PYTHONPATH: /srv/examples}}}}\n"
    )
    stack_port, devserver_port = free_port(), free_port()
    overrides = {
        "APP_MODULE": "hello:app",
        "APP_STATIC_DIR": "/srv/examples/static",
        "BASELINE": "1",
        "STACK_PORT": str(stack_port),
        "DEVSERVER_PORT": str(devserver_port),
        "TLS_ENABLED": "0",
        "MONITORING": "0",  # the test stack's Prometheus holds its port
        "DATABASE_URL": "",
        "COMPOSE_EXTRA_FILES": str(override),
    }
    base = (ROOT / os.environ.get("ENV_FILE", ".env")).read_text().splitlines()
    lines = [line for line in base if line.split("=", 1)[0] not in overrides]
    env_file = workdir / "hello.env"
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    env = {**os.environ, "PROJECT": f"{os.environ['PROJECT']}-hello", "ENV_FILE": str(env_file)}
    for name in ("APP_MODULE", "APP_STATIC_DIR", "BASELINE", "DATABASE_URL", "LOCUSTFILE"):
        env.pop(name, None)
    try:
        stack("up", "1", env=env, timeout=None)
        yield {
            "url": f"http://127.0.0.1:{stack_port}",
            "baseline": f"http://127.0.0.1:{devserver_port}",
            "env": env,
        }
    finally:
        stack("compose", "down", "-v", "--remove-orphans", env={**env, "BASELINE": "1"},
              check=False, timeout=None)  # fmt: skip


def test_nginx_serves_shared_static_files_with_a_long_cache(hello_stack):
    r = requests.get(f"{hello_stack['url']}/static/hello.css", timeout=5)
    assert r.status_code == 200
    assert r.content == CSS
    assert r.headers["Content-Type"].startswith("text/css")
    assert r.headers["Cache-Control"] == "max-age=604800"
    # From the volume: no replica answered, and nginx's own validators are there.
    assert "X-Served-By" not in r.headers
    assert r.headers["ETag"] and r.headers["X-Request-ID"]
    again = requests.get(
        f"{hello_stack['url']}/static/hello.css",
        headers={"If-None-Match": r.headers["ETag"]},
        timeout=5,
    )
    assert again.status_code == 304


def test_a_static_path_not_shared_goes_to_the_app(hello_stack):
    r = requests.get(f"{hello_stack['url']}/static/missing.css", timeout=5)
    assert r.status_code == 404
    assert r.headers["X-Served-By"]  # the replica answered
    assert r.json()["error"]["code"] == "not_found"
    assert r.json()["request_id"] == r.headers["X-Request-ID"]


def test_without_a_shared_folder_the_app_serves_its_static_files(hello_stack):
    """APP_STATIC_DIR empty: the one-shot empties the volume and every /static/ goes to the app."""
    env = hello_stack["env"]
    stack("compose", "run", "--rm", "--no-deps", "-e", "APP_STATIC_DIR=", "static", env=env)
    try:
        r = requests.get(f"{hello_stack['url']}/static/hello.css", timeout=5)
        assert r.status_code == 200
        assert r.content == CSS
        assert r.headers["X-Served-By"]
        assert r.headers["Cache-Control"] == "no-cache"  # the app's own header
    finally:
        stack("compose", "run", "--rm", "--no-deps", "static", env=env)


def test_the_baseline_serves_the_same_app(hello_stack):
    """The devserver serves APP_MODULE too, so the load test compares the same app."""
    r = requests.get(f"{hello_stack['baseline']}/any/path", timeout=5)
    assert r.headers["Server"].startswith("Werkzeug/")
    assert r.json()["hello"] == "from a minimal WSGI app"


@pytest.fixture(scope="module")
def own_loadtest(hello_stack, tmp_path_factory):
    """`make loadtest LOCUSTFILE=examples/hello/locustfile.py` in its smoke form, once."""
    results_dir = tmp_path_factory.mktemp("own-loadtest")
    env = {
        **hello_stack["env"],
        "SMOKE": "1",
        # One Locust process: the ceiling is measured once, which keeps the smoke short.
        "PROCESSES": "1",
        "LOCUSTFILE": "examples/hello/locustfile.py",
        "STACK_URL": hello_stack["url"],
        "BASELINE_URL": hello_stack["baseline"],
        "RESULTS_DIR": str(results_dir),
    }
    for name in ("SCENARIOS", "USERS", "DURATION", "ROUNDS", "WARMUP", "REFERENCE", "SHAPE"):
        env.pop(name, None)
    proc = run(sys.executable, "-m", "loadtest.run", env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    return out_dir, json.loads((out_dir / "results.json").read_text()), proc.stdout


def test_own_locustfile_runs_each_user_class_against_both_targets(own_loadtest):
    _, results, stdout = own_loadtest
    scenarios = ["HelloUser", "StaticUser"]
    assert results["config"]["scenarios"] == scenarios
    ran = {(r["scenario"], r["target"]) for r in results["runs"]}
    assert ran == {(s, t) for s in scenarios for t in ("stack", "builtin")}
    for r in results["runs"]:
        assert not r.get("error"), r
        assert r["requests"] > 0 and r["failures_total"] == 0, r
    assert results["ceiling"]["rps"]["1"] > 0
    assert f"scenarios from {EXAMPLE / 'locustfile.py'}: HelloUser, StaticUser" in stdout


def test_own_locustfile_report_says_which_file_ran(own_loadtest):
    out_dir, _, _ = own_loadtest
    report = (out_dir / "report.md").read_text()
    assert f"your locustfile `{EXAMPLE / 'locustfile.py'}`" in report
    for scenario in ("HelloUser", "StaticUser"):
        assert f"| {scenario} | stack |" in report and f"| {scenario} | builtin |" in report
