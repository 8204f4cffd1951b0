"""The base images: `deploy/images/build.sh` is a no-op once they exist, and each one starts and
answers its health check the way the stack uses it (official image or air-gapped stand-in alike).

Only the docker CLI is used; every container and volume made here has a unique name and is
removed afterwards.
"""

from __future__ import annotations

import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, run, wait_for

BUILD = ROOT / "deploy" / "images" / "build.sh"
PREFIX = f"flaskstack-imgtest-{uuid.uuid4().hex[:8]}"
PASSWORD = "s3cret"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run("docker", *args, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Make sure every base image exists (a no-op after `make images`); return their names."""
    run(str(BUILD), "base", timeout=1200)
    names = run(str(BUILD), "names").stdout.split()
    return dict(line.split("=", 1) for line in names)


@pytest.fixture
def cleanup() -> Iterator[Callable[[str, str], str]]:
    """Register containers ("container", name) and volumes ("volume", name) to remove."""
    made: list[tuple[str, str]] = []

    def register(kind: str, name: str) -> str:
        made.append((kind, name))
        return name

    yield register
    for kind, name in reversed(made):
        if kind == "container":
            docker("rm", "-f", "-v", name, check=False)
        else:
            docker("volume", "rm", "-f", name, check=False)


def test_second_build_is_a_noop(images: dict[str, str]) -> None:
    out = run(str(BUILD), "base", timeout=120).stdout
    for name in images.values():
        assert f"{name}: reused" in out, out
    assert "nothing to build" in out, out
    assert "building" not in out and "built stand-in" not in out, out


def test_wheelhouse_is_cached() -> None:
    run(str(BUILD), "wheels", timeout=600)
    out = run(str(BUILD), "wheels", timeout=60).stdout
    assert "wheels: up to date" in out, out


def test_stop_signals_match_the_official_images(images: dict[str, str]) -> None:
    def stop_signal(image: str) -> str:
        return docker("image", "inspect", "-f", "{{.Config.StopSignal}}", image).stdout.strip()

    assert stop_signal(images["NGINX_IMAGE"]) == "SIGQUIT"
    assert stop_signal(images["POSTGRES_IMAGE"]) == "SIGINT"


def test_python_makes_a_venv(images: dict[str, str]) -> None:
    script = "python3 -m venv /tmp/v && /tmp/v/bin/python -V"
    out = docker("run", "--rm", "--network", "none", images["PYTHON_IMAGE"], "sh", "-c", script)
    assert out.stdout.startswith("Python 3.13."), out.stdout


def test_python_installs_the_wheelhouse_offline(images: dict[str, str]) -> None:
    """The app image's install step: a venv filled from build/wheelhouse, no network."""
    run(str(BUILD), "wheels", timeout=600)
    script = (
        "python3 -m venv /tmp/v"
        " && /tmp/v/bin/pip install -q --no-cache-dir --no-index --find-links /wheels"
        " --require-hashes -r /app.lock"
        " && /tmp/v/bin/python -c"
        " 'import flask, tornado, psycopg2, bcrypt, sqlalchemy; print(\"ok\")'"
    )
    out = docker(
        "run", "--rm", "--network", "none",
        "-v", f"{ROOT / 'build' / 'wheelhouse'}:/wheels:ro",
        "-v", f"{ROOT / 'requirements' / 'app.lock'}:/app.lock:ro",
        images["PYTHON_IMAGE"], "sh", "-c", script,
        timeout=300,
    )  # fmt: skip
    assert out.stdout.strip().endswith("ok"), out.stdout + out.stderr


NGINX_CONF = """\
# Unprivileged: pid and temp paths in /tmp, as the stack's nginx.conf has them.
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    client_body_temp_path /tmp/client_temp;
    proxy_temp_path /tmp/proxy_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    access_log /dev/stdout;
    # `server ... resolve` needs nginx >= 1.27.3: this line is why nginx comes from Debian testing.
    resolver 127.0.0.11 valid=5s;
    upstream later { zone later 64k; server replica.invalid:8000 resolve; }
    include /tmp/*.conf;
}
"""

# $host is nginx's; ${GREETING} is the environment's: only the latter may be substituted.
SITE_TEMPLATE = """\
server {
    listen 8080;
    location / { return 200 "host=$host greeting=${GREETING}\\n"; }
}
"""


def test_nginx_serves_as_uid_101_with_templates(
    images: dict[str, str], cleanup: Callable[[str, str], str], tmp_path: Path
) -> None:
    (tmp_path / "nginx.conf").write_text(NGINX_CONF)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "site.conf.template").write_text(SITE_TEMPLATE)
    name = cleanup("container", f"{PREFIX}-nginx")
    docker(
        "run", "-d", "--name", name, "--user", "101:101", "--read-only",
        "--tmpfs", "/tmp:uid=101,gid=101",
        "-e", "GREETING=hello", "-e", "NGINX_ENVSUBST_OUTPUT_DIR=/tmp",
        "-v", f"{tmp_path / 'nginx.conf'}:/etc/nginx/nginx.conf:ro",
        "-v", f"{tmp_path / 'templates'}:/etc/nginx/templates:ro",
        "-p", "127.0.0.1::8080",
        images["NGINX_IMAGE"],
    )  # fmt: skip
    port = docker("port", name, "8080").stdout.split()[0].rsplit(":", 1)[1]

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(answers, 30, "nginx to answer")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        assert resp.read().decode() == "host=127.0.0.1 greeting=hello\n"
    assert docker("exec", name, "id", "-u").stdout.strip() == "101"
    docker("exec", name, "nginx", "-t")
    # SIGQUIT: a graceful stop, exit status 0.
    docker("stop", "-t", "20", name, timeout=60)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_postgres_as_uid_999_on_a_fresh_volume(
    images: dict[str, str], cleanup: Callable[[str, str], str], tmp_path: Path
) -> None:
    init = tmp_path / "initdb"
    init.mkdir()
    (init / "01-seed.sql").write_text(
        "CREATE TABLE seeded (x int); INSERT INTO seeded VALUES (42);\n"
    )
    volume = cleanup("volume", f"{PREFIX}-pgdata")
    name = cleanup("container", f"{PREFIX}-postgres")
    docker("volume", "create", volume)
    docker(
        "run", "-d", "--name", name, "--user", "999:999", "--read-only",
        "--tmpfs", "/tmp", "--tmpfs", "/var/run/postgresql:uid=999,gid=999",
        "-e", "POSTGRES_USER=app", "-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_DB=appdb",
        "-v", f"{volume}:/var/lib/postgresql/data",
        "-v", f"{init}:/docker-entrypoint-initdb.d:ro",
        images["POSTGRES_IMAGE"], "postgres", "-c", "max_connections=42",
    )  # fmt: skip

    def ready() -> bool:
        probe = ("exec", name, "pg_isready", "-h", "127.0.0.1", "-U", "app", "-d", "appdb")
        return docker(*probe, timeout=30, check=False).returncode == 0

    def sql(
        query: str, password: str = PASSWORD, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # Over TCP to the container's own network address, as the app connects: password auth
        # in the official image and the stand-in alike (the official one trusts 127.0.0.1).
        return docker(
            "exec", "-e", f"PGPASSWORD={password}", name, "sh", "-c",
            f"psql -h \"$(hostname -i)\" -U app -d appdb -tAc '{query}'",
            timeout=30, check=check,
        )  # fmt: skip

    wait_for(ready, 90, "postgres to accept TCP connections")
    assert sql("SELECT x FROM seeded").stdout.strip() == "42"
    assert sql("SHOW max_connections").stdout.strip() == "42"
    assert sql("SELECT 1", password="wrong", check=False).returncode != 0
    sql("INSERT INTO seeded VALUES (43)")

    # SIGINT: a fast shutdown, exit status 0; the data survives a restart.
    docker("stop", "-t", "30", name, timeout=60)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    docker("start", name)
    wait_for(ready, 60, "postgres to come back")
    assert sql("SELECT count(*) FROM seeded").stdout.strip() == "2"
