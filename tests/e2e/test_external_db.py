"""Your own database: with DATABASE_URL set, the bundled Postgres is left out and the stack
migrates and serves the external one. The "managed service" here is a Postgres container started
outside the compose project, on a Docker network of its own that an override file
(COMPOSE_EXTRA_FILES) joins the app, migrate and devserver services to. With monitoring on, the
Postgres exporter is left out with the bundled Postgres."""

from __future__ import annotations

import os
import secrets
import time

import pytest
import requests

from tests.support import ROOT, free_port, run, stack


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
        "MONITORING": "1",
        "PROMETHEUS_PORT": str(free_port()),
        "COMPOSE_EXTRA_FILES": str(override),
    }
    lines = [line for line in base if line.split("=", 1)[0] not in overrides]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    env = {**os.environ, "PROJECT": project, "ENV_FILE": str(env_file)}
    env.pop("DATABASE_URL", None)

    run("docker", "network", "create", network, timeout=None)
    run(
        "docker", "run", "-d", "--name", db_name, "--network", network,
        "--network-alias", "managed-db", "--user", "999:999",
        "--tmpfs", "/var/lib/postgresql/data:uid=999,gid=999",
        "--tmpfs", "/var/run/postgresql:uid=999,gid=999",
        "-e", "POSTGRES_USER=managed", "-e", f"POSTGRES_PASSWORD={password}",
        "-e", "POSTGRES_DB=appdb", image,
        timeout=None,
    )  # fmt: skip
    try:
        services = stack("services", env=env, timeout=None).stdout.split()
        stack("compose", "up", "-d", "--scale", "app=1", env=env, timeout=None)
        stack("wait", "180", env=env, timeout=None)
        yield {
            "url": f"http://127.0.0.1:{stack_port}",
            "services": services,
            "db": db_name,
            "containers": stack("compose", "ps", "-q", env=env, timeout=None).stdout.split(),
        }
    finally:
        stack("compose", "down", "-v", "--remove-orphans", env=env, check=False, timeout=None)
        run("docker", "rm", "-f", db_name, check=False, timeout=None)
        run("docker", "network", "rm", network, check=False, timeout=None)


def test_bundled_postgres_is_left_out(external_stack):
    assert "postgres" not in external_stack["services"]
    assert "postgres-exporter" not in external_stack["services"]
    assert "prometheus" in external_stack["services"]
    names = [
        run("docker", "inspect", "-f", "{{.Name}}", c, timeout=None).stdout.strip()
        for c in external_stack["containers"]
    ]
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
            "SELECT title FROM posts", timeout=None,
        ).stdout.strip()  # fmt: skip
    assert title in found
    tables = run(
        "docker", "exec", external_stack["db"], "psql", "-U", "managed", "-d", "appdb", "-Atc",
        "SELECT count(*) FROM world", timeout=None,
    ).stdout.strip()  # fmt: skip
    assert tables == "10000"  # the seed ran against the external database too
