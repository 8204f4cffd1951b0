"""Adapting the stack: another WSGI app through APP_MODULE, served by the same host and nginx."""

from __future__ import annotations

import os
import time

import requests

from tests.faults import faultkit as fk
from tests.support import ROOT, run


def docker(*args: str) -> str:
    return run("docker", *args, timeout=None).stdout.strip()


def test_app_module_serves_another_wsgi_app_through_nginx(stack_url):
    """A replica started with APP_MODULE=hello:app joins the `app` service and answers via nginx."""
    project = os.environ["PROJECT"]
    image = os.environ.get("APP_IMAGE", "flaskstack/app:local")
    name = f"{project}-hello-{os.getpid()}"
    docker(
        "run", "-d", "--name", name,
        "--network", f"{project}_edge", "--network-alias", "app",
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "-v", f"{ROOT / 'examples' / 'hello'}:/srv/examples:ro",
        "-e", "PYTHONPATH=/srv/examples", "-e", "APP_MODULE=hello:app",
        image,
    )  # fmt: skip
    try:
        hostname = docker("inspect", "-f", "{{.Config.Hostname}}", name)
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and answer is None:
            if docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy":
                r = requests.get(f"{stack_url}/any/path", timeout=5)
                if r.headers.get("Content-Type") == "application/json" and "hello" in r.json():
                    answer = r.json()
            time.sleep(0.2)
        assert answer is not None, docker("logs", name)
        assert answer == {
            "hello": "from a minimal WSGI app",
            "path": "/any/path",
            "replica": hostname,
        }
    finally:
        address = docker(
            "inspect",
            "-f",
            f'{{{{(index .NetworkSettings.Networks "{project}_edge").IPAddress}}}}',
            name,
        )
        removed_at = time.time()
        docker("rm", "-f", name)
        # nginx forgets the removed replica at its next DNS refresh (5 s): not in the next test.
        fk.wait_nginx_forgets(stack_url, {f"{address}:8000"}, removed_at)
