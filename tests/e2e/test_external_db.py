"""Your own database: with DATABASE_URL set, the bundled Postgres is left out and the stack
migrates and serves the external one. The "managed service" here is a Postgres container started
outside the compose project, on a Docker network of its own that an override file
(COMPOSE_EXTRA_FILES) joins the app, migrate and devserver services to."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time

import pytest
import requests

from .conftest import ROOT

STACK = str(ROOT / "deploy" / "scripts" / "stack.sh")


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def external_stack(tmp_path_factory):
    """A one-replica stack of its own (project flaskstack-extdb) on an external Postgres."""
    project = f"{os.environ['PROJECT']}-extdb"
    image = os.environ.get("POSTGRES_IMAGE", "postgres:17-trixie")
    db_name = f"{project}-managed-pg"
    password = secrets.token_urlsafe(18)
    stack_port = free_port()
    workdir = tmp_path_factory.mktemp("extdb")
    env_file = workdir / "extdb.env"
    network = f"{project}-managed-net"
    override = workdir / "managed-db.yml"
    override.write_text(
        "services:\n"
        "  migrate: {networks: [data, managed]}\n"
        "  app: {networks: [edge, data, managed]}\n"
        "  devserver: {networks: [public, data, managed]}\n"
        f"networks:\n  managed: {{external: true, name: {network}}}\n"
    )
    base = (ROOT / os.environ.get("ENV_FILE", ".env")).read_text().splitlines()
    overrides = {
        "DATABASE_URL": f"postgresql+psycopg2://managed:{password}@managed-db:5432/appdb",
        "STACK_PORT": str(stack_port),
        "DEVSERVER_PORT": str(free_port()),
        "TLS_ENABLED": "0",
        "COMPOSE_EXTRA_FILES": str(override),
    }
    lines = [line for line in base if line.split("=", 1)[0] not in overrides]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    env = {**os.environ, "PROJECT": project, "ENV_FILE": str(env_file)}
    env.pop("DATABASE_URL", None)

    run("docker", "network", "create", network)
    run(
        "docker", "run", "-d", "--name", db_name, "--network", network,
        "--network-alias", "managed-db", "--user", "999:999",
        "--tmpfs", "/var/lib/postgresql/data:uid=999,gid=999",
        "--tmpfs", "/var/run/postgresql:uid=999,gid=999",
        "-e", "POSTGRES_USER=managed", "-e", f"POSTGRES_PASSWORD={password}",
        "-e", "POSTGRES_DB=appdb", image,
    )  # fmt: skip
    try:
        services = run(STACK, "compose", "config", "--services", env=env).split()
        run(STACK, "compose", "up", "-d", "--scale", "app=1", env=env)
        run(STACK, "wait", "180", env=env)
        yield {
            "url": f"http://127.0.0.1:{stack_port}",
            "services": services,
            "db": db_name,
            "containers": run(STACK, "compose", "ps", "-q", env=env).split(),
        }
    finally:
        subprocess.run(
            [STACK, "compose", "down", "-v", "--remove-orphans"], cwd=ROOT, env=env, check=False
        )
        subprocess.run(["docker", "rm", "-f", db_name], check=False, capture_output=True)
        subprocess.run(["docker", "network", "rm", network], check=False, capture_output=True)


def test_bundled_postgres_is_left_out(external_stack):
    assert "postgres" not in external_stack["services"]
    names = [run("docker", "inspect", "-f", "{{.Name}}", c) for c in external_stack["containers"]]
    assert not [n for n in names if "postgres" in n]


def test_migrations_and_writes_go_to_the_external_database(external_stack):
    url = external_stack["url"]
    creds = {"username": f"ext{secrets.token_hex(5)}", "password": secrets.token_urlsafe(16)}
    assert requests.post(f"{url}/api/auth/register", json=creds, timeout=10).status_code == 201
    token = requests.post(f"{url}/api/auth/login", json=creds, timeout=30).json()["access_token"]
    title = f"stored in the managed db {secrets.token_hex(4)}"
    r = requests.post(
        f"{url}/api/posts",
        json={"title": title, "body": "x"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    found = ""
    while time.monotonic() < deadline and title not in found:
        found = run(
            "docker", "exec", external_stack["db"], "psql", "-U", "managed", "-d", "appdb", "-Atc",
            "SELECT title FROM posts",
        )  # fmt: skip
    assert title in found
    tables = run(
        "docker", "exec", external_stack["db"], "psql", "-U", "managed", "-d", "appdb", "-Atc",
        "SELECT count(*) FROM world",
    )  # fmt: skip
    assert tables == "10000"  # the seed ran against the external database too
