"""The Python that deploy/scripts/swarm.sh runs: the stack-file rendering, the pending-services
check and the nginx probe, on inputs shaped like what the script feeds them (no Docker needed).
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.scripts import swarm_probe, swarm_render, swarm_status

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "deploy" / "scripts"

# ---------------------------------------------------------------------------------------------
# swarm_render.py
# ---------------------------------------------------------------------------------------------

# `docker compose config` (v2) of docker-compose.yml + deploy/compose/swarm.yml with BASELINE=1,
# as `swarm.sh render` pipes it (environment shortened): compose's own limits, tmpfs, shm_size
# and restart, and swarm.yml's deploy keys. Compose v2 (2.40) keeps swarm.yml's long-form nginx
# port beside the base file's "127.0.0.1:8080:8080", which it prints with its host_ip.
COMPOSE_V2 = """\
name: flaskstack-swarm
services:
  app:
    build:
      context: /srv/flaskstack
      dockerfile: deploy/tornado/Dockerfile
      args:
        PYTHON_IMAGE: python:3.13-slim-trixie
    cap_drop:
      - ALL
    cpus: 1
    depends_on:
      migrate:
        condition: service_completed_successfully
        required: true
    deploy:
      replicas: 3
      placement:
        preferences:
          - spread: node.labels.flaskstack.zone
    dns_opt:
      - timeout:1
      - attempts:2
    environment:
      APP_ENV: production
      DATABASE_URL: postgresql+psycopg2://app:pw@postgres:5432/app
      SHUTDOWN_DELAY: "5"
    image: flaskstack/app:local
    init: true
    mem_limit: "268435456"
    networks:
      data: null
      edge: null
    pids_limit: 256
    read_only: true
    restart: unless-stopped
    security_opt:
      - no-new-privileges:true
    stop_grace_period: 30s
    tmpfs:
      - /tmp:size=64m
    volumes:
      - type: volume
        source: uploads
        target: /data/uploads
        volume: {}
  devserver:
    command:
      - flask
      - run
    cpus: 1
    deploy:
      replicas: 0
    image: flaskstack/app:local
    mem_limit: "268435456"
    ports:
      - mode: ingress
        host_ip: 127.0.0.1
        target: 5000
        published: "5000"
        protocol: tcp
    profiles:
      - baseline
    restart: unless-stopped
  migrate:
    build:
      context: /srv/flaskstack
      dockerfile: deploy/tornado/Dockerfile
    cap_drop:
      - ALL
    command:
      - python3
      - -m
      - flaskstack.migrate
    dns_opt:
      - timeout:1
      - attempts:2
    image: flaskstack/app:local
    networks:
      data: null
    pids_limit: 256
    read_only: true
    restart: "no"
    security_opt:
      - no-new-privileges:true
    tmpfs:
      - /tmp:size=64m
  nginx:
    build:
      context: /srv/flaskstack
      dockerfile: deploy/nginx/Dockerfile
    cap_drop:
      - ALL
    deploy:
      mode: global
      update_config:
        order: stop-first
        failure_action: rollback
    image: flaskstack/nginx:local
    mem_limit: "134217728"
    networks:
      edge: null
      public: null
    ports:
      - mode: ingress
        host_ip: 127.0.0.1
        target: 8080
        published: "8080"
        protocol: tcp
      - mode: host
        target: 8080
        published: "8080"
        protocol: tcp
    read_only: true
    restart: unless-stopped
    security_opt:
      - no-new-privileges:true
    tmpfs:
      - /tmp:size=256m,uid=101,gid=101
      - /etc/nginx/conf.d:size=1m,uid=101,gid=101
    user: "101:101"
    volumes:
      - type: volume
        source: uploads
        target: /data/uploads
        read_only: true
        volume: {}
  postgres:
    deploy:
      update_config:
        order: stop-first
      placement:
        constraints:
          - node.labels.flaskstack.postgres == true
    image: postgres:17-trixie
    mem_limit: "536870912"
    networks:
      data: null
    read_only: true
    restart: unless-stopped
    shm_size: "134217728"
    tmpfs:
      - /tmp:size=16m
      - /var/run/postgresql:size=1m,uid=999,gid=999
    volumes:
      - type: volume
        source: pgdata
        target: /var/lib/postgresql/data
        volume: {}
networks:
  data:
    name: flaskstack-swarm_data
    internal: true
  edge:
    name: flaskstack-swarm_edge
    internal: true
  public:
    name: flaskstack-swarm_public
volumes:
  pgdata:
    name: flaskstack-swarm_pgdata
  uploads:
    name: flaskstack-swarm_uploads
"""

# docker-compose 1.29 renders short-form ports as strings, sizes with their unit, and may give
# labels as a list (a COMPOSE_EXTRA_FILES service that swarm.yml knows nothing of).
COMPOSE_V1_SERVICE = """\
version: "3.9"
services:
  metrics:
    image: prom/statsd-exporter:v0.26.0
    labels:
      - com.example.team=ops
      - com.example.note=a=b
    mem_limit: 64m
    cpus: 0.5
    pids_limit: 64
    restart: on-failure:3
    tmpfs:
      - /tmp:size=8m,uid=65534
      - /run
    volumes:
      - ./statsd.yml:/etc/statsd.yml:ro
    ports:
      - target: 9102
        published: 9102
        protocol: tcp
        mode: ingress
      - 127.0.0.1:9102:9102/tcp
      - 127.0.0.1:9125:9125/udp
      - 9200:9100
"""

# docker-compose 1.29 keeps the services of every profile, with their `profiles`, and renders
# external-db.yml's `scale: 0` as it is.
COMPOSE_V1_PROFILES = """\
version: "3.9"
services:
  app:
    image: flaskstack/app:local
  postgres:
    image: postgres:17-trixie
    scale: 0
  prometheus:
    image: prom/prometheus:v2.53.3
    profiles:
      - monitoring
  backup:
    image: postgres:17-trixie
    profiles:
      - backup
      - nightly
  devserver:
    image: flaskstack/app:local
    profiles:
      - baseline
"""

IMAGE_IDS = {
    "flaskstack/app:local": "sha256:" + "a" * 64,
    "flaskstack/nginx:local": "sha256:" + "b" * 64,
    "postgres:17-trixie": "sha256:" + "c" * 64,
    "prom/statsd-exporter:v0.26.0": "sha256:" + "d" * 64,
}
UID_NOTE = "tmpfs uid, gid and mode (Swarm has none)"


def render(
    text: str, mode: str = "host", image_id: Any = IMAGE_IDS.get, **environ: str
) -> tuple[dict, list]:
    """The stack document and the lost keys for a compose document, as `main` makes them."""
    doc = yaml.safe_load(text)
    lost = swarm_render.to_stack(doc, {"SWARM_PUBLISH_MODE": mode, **environ}, image_id)
    return doc, lost


def test_render_moves_secret_environment_into_swarm_secrets(tmp_path: Path) -> None:
    doc = {
        "services": {
            "app": {"environment": {"SECRET_KEY": "s" * 40, "LOG_LEVEL": "INFO"}},
            "migrate": {"environment": ["SECRET_KEY=" + "s" * 40, "DATABASE_URL=postgresql://x"]},
            "postgres": {"environment": {"POSTGRES_PASSWORD": "pw", "POSTGRES_USER": "app"}},
            "nginx": {"environment": {"DATABASE_URL": ""}},
        }
    }
    swarm_render.to_secrets(doc, tmp_path / "secrets", "st")
    app, migrate = doc["services"]["app"], doc["services"]["migrate"]
    assert app["environment"] == {"LOG_LEVEL": "INFO", "SECRET_KEY_FILE": "/run/secrets/secret_key"}
    assert app["secrets"] == [{"source": "secret_key", "target": "secret_key"}]
    assert migrate["environment"] == {
        "SECRET_KEY_FILE": "/run/secrets/secret_key",
        "DATABASE_URL_FILE": "/run/secrets/database_url",
    }
    assert doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password"
    )
    assert "secrets" not in doc["services"]["nginx"]  # an empty value is no secret
    assert sorted(doc["secrets"]) == ["database_url", "postgres_password", "secret_key"]
    secret = doc["secrets"]["secret_key"]
    assert secret["name"].startswith("st_secret_key_") and len(secret["name"]) == 14 + 12
    path = Path(secret["file"])
    assert path.read_text() == "s" * 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    # Another value: another secret (Swarm secrets cannot change), the same value: the same.
    again = {"services": {"app": {"environment": {"SECRET_KEY": "t" * 40}}}}
    swarm_render.to_secrets(again, tmp_path / "secrets", "st")
    assert again["secrets"]["secret_key"]["name"] != secret["name"]


def test_render_refuses_a_secret_that_differs_between_services(tmp_path: Path) -> None:
    doc = {
        "services": {
            "app": {"environment": {"SECRET_KEY": "a" * 40}},
            "migrate": {"environment": {"SECRET_KEY": "b" * 40}},
        }
    }
    with pytest.raises(swarm_render.RenderError, match="SECRET_KEY of migrate differs"):
        swarm_render.to_secrets(doc, tmp_path, "st")


def test_render_turns_file_mounts_into_configs_and_keeps_directories(tmp_path: Path) -> None:
    conf = tmp_path / "prometheus.yml"
    conf.write_text("global: {}\n")
    doc = {
        "services": {
            "prometheus": {
                "volumes": [
                    f"{conf}:/etc/prometheus/prometheus.yml:ro",
                    f"{tmp_path}:/srv/dir:ro",
                    "data:/prometheus:rw",
                ]
            },
            "v2": {"volumes": [{"type": "bind", "source": str(conf), "target": "/c.yml"}]},
        }
    }
    swarm_render.to_configs(doc, "st")
    prometheus = doc["services"]["prometheus"]
    assert prometheus["volumes"] == [f"{tmp_path}:/srv/dir:ro", "data:/prometheus:rw"]
    mount = {"source": "prometheus_yml", "mode": 0o444}
    assert prometheus["configs"] == [{**mount, "target": "/etc/prometheus/prometheus.yml"}]
    assert doc["services"]["v2"] == {"volumes": [], "configs": [{**mount, "target": "/c.yml"}]}
    name = doc["configs"]["prometheus_yml"]["name"]
    assert name.startswith("st_prometheus_yml_") and doc["configs"]["prometheus_yml"]["file"]
    conf.write_text("global: {scrape_interval: 9s}\n")  # new content, new config
    again = {"services": {"p": {"volumes": [f"{conf}:/x:ro"]}}}
    swarm_render.to_configs(again, "st")
    assert again["configs"]["prometheus_yml"]["name"] != name
    none = {"services": {"app": {"volumes": ["uploads:/data"]}}}
    swarm_render.to_configs(none, "st")
    assert "configs" not in none


@pytest.mark.parametrize("port", ["", "19191"])
def test_render_publishes_prometheus_only_on_request(port: str) -> None:
    text = "services:\n  prometheus:\n    ports: ['127.0.0.1:9090:9090']\n"
    doc, _ = render(text, image_id=None, SWARM_PROMETHEUS_PORT=port)
    prometheus = doc["services"]["prometheus"]
    expected = [{"target": 9090, "published": 19191, "protocol": "tcp", "mode": "host"}]
    assert prometheus.get("ports") == (expected if port else None)
    # Published, it keeps its virtual IP (an ingress port needs one); otherwise DNS round robin.
    assert prometheus["deploy"].get("endpoint_mode") == (None if port else "dnsrr")


def test_render_only_keeps_the_services_named() -> None:
    doc, _ = render(COMPOSE_V2)
    first = swarm_render.only(doc, ["postgres", "migrate", "absent"])
    assert list(first["services"]) == ["migrate", "postgres"]
    assert "networks" in first and "volumes" in first


def test_render_leaves_out_services_with_zero_replicas_and_compose_v2_name() -> None:
    doc, _ = render(COMPOSE_V2, COMPOSE_PROFILES="baseline")
    assert list(doc["services"]) == ["app", "migrate", "nginx", "postgres"]
    assert "name" not in doc
    # Added last: yaml.safe_dump(sort_keys=False) prints it after networks and volumes.
    assert list(doc) == ["services", "networks", "volumes", "version"]
    assert doc["version"] == "3.9"


def test_render_leaves_out_services_of_inactive_profiles_and_scale_zero() -> None:
    doc, _ = render(COMPOSE_V1_PROFILES, image_id=None)
    assert list(doc["services"]) == ["app"]
    doc, _ = render(COMPOSE_V1_PROFILES, image_id=None, COMPOSE_PROFILES="monitoring,nightly")
    assert list(doc["services"]) == ["app", "prometheus", "backup"]
    # Compose v2 would not list `profiles` or `scale`; Swarm refuses both.
    assert all("profiles" not in svc and "scale" not in svc for svc in doc["services"].values())
    doc, _ = render("services:\n  worker:\n    scale: 2\n", image_id=None)
    assert doc["services"]["worker"]["deploy"]["replicas"] == 2


def test_render_drops_the_keys_swarm_refuses_or_ignores() -> None:
    doc, _ = render(COMPOSE_V2)
    dropped = {"mem_limit", "cpus", "pids_limit", "tmpfs", "shm_size", "restart", "profiles"}
    dropped |= {"security_opt", "build", "depends_on", "dns_opt", "scale"}
    for name, svc in doc["services"].items():
        assert dropped.isdisjoint(svc), (name, sorted(dropped & set(svc)))
    # What Swarm honours stays, in compose's order.
    assert list(doc["services"]["app"]) == [
        "cap_drop",
        "deploy",
        "environment",
        "image",
        "init",
        "networks",
        "read_only",
        "stop_grace_period",
        "volumes",
        "labels",
    ]


def test_render_translates_limits() -> None:
    doc, lost = render(COMPOSE_V2)
    services = doc["services"]
    assert services["app"]["deploy"]["resources"]["limits"] == {
        "memory": "268435456",
        "cpus": "1",  # a number is refused
        "pids": 256,
    }
    assert services["migrate"]["deploy"]["resources"]["limits"] == {"pids": 256}
    assert services["nginx"]["deploy"]["resources"]["limits"] == {"memory": "134217728"}
    assert services["postgres"]["deploy"]["resources"]["limits"] == {"memory": "536870912"}
    assert lost == [f"{UID_NOTE}: postgres /var/run/postgresql"]


def test_render_keeps_a_limit_the_deploy_section_already_sets() -> None:
    doc = {
        "services": {
            "worker": {
                "image": "worker:1",
                "mem_limit": "1g",
                "cpus": 2,
                "pids_limit": 512,
                "tmpfs": ["/scratch"],
                "volumes": ["scratch:/scratch"],
                "deploy": {"resources": {"limits": {"pids": 100, "cpus": 0.25}}},
            }
        }
    }
    lost = swarm_render.to_stack(doc, {}, None)
    worker = doc["services"]["worker"]
    assert worker["deploy"]["resources"]["limits"] == {"pids": 100, "cpus": "0.25", "memory": "1g"}
    assert worker["volumes"] == ["scratch:/scratch"]  # /scratch is mounted already: no tmpfs
    assert lost == []


def tmpfs_mounts(svc: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(target, size) of each tmpfs volume of a rendered service."""
    return [
        (v["target"], v.get("tmpfs", {}).get("size"))
        for v in svc.get("volumes", [])
        if isinstance(v, dict) and v.get("type") == "tmpfs"
    ]


def test_render_translates_tmpfs_and_shm_size() -> None:
    doc, lost = render(COMPOSE_V2)
    services = doc["services"]
    assert tmpfs_mounts(services["app"]) == [("/tmp", 64 * 2**20)]
    assert tmpfs_mounts(services["migrate"]) == [("/tmp", 64 * 2**20)]
    assert tmpfs_mounts(services["postgres"]) == [
        ("/tmp", 16 * 2**20),
        ("/var/run/postgresql", 2**20),  # without its uid, said once
        ("/dev/shm", 128 * 2**20),
    ]
    assert lost == [f"{UID_NOTE}: postgres /var/run/postgresql"]
    # nginx runs one task per node: its tmpfs with a uid is a node's volume, which takes one.
    assert tmpfs_mounts(services["nginx"]) == []
    assert services["nginx"]["volumes"][1:] == [
        {"type": "volume", "source": "nginx-tmp", "target": "/tmp"},
        {"type": "volume", "source": "nginx-etc-nginx-conf-d", "target": "/etc/nginx/conf.d"},
    ]
    assert doc["volumes"]["nginx-etc-nginx-conf-d"] == {
        "driver": "local",
        "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,uid=101,gid=101"},
    }
    assert doc["volumes"]["nginx-tmp"]["driver_opts"]["o"] == "size=256m,uid=101,gid=101"


@pytest.mark.parametrize(
    ("restart", "policy"),
    [
        ("unless-stopped", {"condition": "any", "delay": "2s"}),
        ("always", {"condition": "any", "delay": "2s"}),
        ("no", {"condition": "on-failure", "delay": "5s", "max_attempts": 20}),
        (False, {"condition": "on-failure", "delay": "5s", "max_attempts": 20}),
        ("on-failure:3", {"condition": "on-failure", "delay": "5s", "max_attempts": 3}),
        ("on-failure", {"condition": "on-failure", "delay": "5s", "max_attempts": 0}),
    ],
)
def test_render_translates_restart(restart: Any, policy: dict[str, Any]) -> None:
    doc = {"services": {"s": {"restart": restart}}}
    swarm_render.to_stack(doc, {}, None)
    assert doc["services"]["s"]["deploy"]["restart_policy"] == policy
    assert "restart" not in doc["services"]["s"]


def test_render_restart_policy_from_swarm_yml_wins_and_none_is_swarms_default() -> None:
    kept = {"condition": "none"}
    doc = {
        "services": {
            "job": {"restart": "no", "deploy": {"restart_policy": kept}},
            "plain": {"image": "x"},
        }
    }
    swarm_render.to_stack(doc, {}, None)
    assert doc["services"]["job"]["deploy"]["restart_policy"] == kept
    assert "restart_policy" not in doc["services"]["plain"]["deploy"]
    with pytest.raises(swarm_render.RenderError, match="unknown restart 'sometimes'"):
        swarm_render.to_stack({"services": {"s": {"restart": "sometimes"}}}, {}, None)


def test_render_dns_round_robin_for_every_service_without_a_published_port() -> None:
    doc, _ = render(COMPOSE_V2)
    modes = {name: svc["deploy"].get("endpoint_mode") for name, svc in doc["services"].items()}
    assert modes == {"app": "dnsrr", "migrate": "dnsrr", "nginx": None, "postgres": "dnsrr"}
    doc = {"services": {"db": {"deploy": {"endpoint_mode": "vip"}}}}
    swarm_render.to_stack(doc, {}, None)
    assert doc["services"]["db"]["deploy"]["endpoint_mode"] == "vip"  # swarm.yml's choice


def test_render_gives_uploads_the_shared_volume_settings() -> None:
    settings = {
        "SWARM_UPLOADS_TYPE": "nfs",
        "SWARM_UPLOADS_DEVICE": ":/exports/uploads",
        "SWARM_UPLOADS_OPTIONS": "addr=nfs.example.com,rw,nfsvers=4",
    }
    doc, _ = render(COMPOSE_V2, **settings)
    assert doc["volumes"]["uploads"] == {
        "name": "flaskstack-swarm_uploads",
        "driver": "local",
        "driver_opts": {
            "type": "nfs",
            "device": ":/exports/uploads",
            "o": "addr=nfs.example.com,rw,nfsvers=4",
        },
    }
    doc, _ = render(COMPOSE_V2)
    assert doc["volumes"]["uploads"] == {"name": "flaskstack-swarm_uploads"}
    with pytest.raises(swarm_render.RenderError, match="SWARM_UPLOADS_TYPE and"):
        render(COMPOSE_V2, SWARM_UPLOADS_DEVICE="/srv/uploads")


def test_render_publishes_ports_without_an_address() -> None:
    doc, _ = render(COMPOSE_V2, mode="ingress")
    # swarm.yml's port publishes 8080 in its own mode; compose's, with an address, is left out.
    assert doc["services"]["nginx"]["ports"] == [
        {"mode": "host", "target": 8080, "published": 8080, "protocol": "tcp"}
    ]
    assert "ports" not in doc["services"]["app"]
    ports = [{"host_ip": "127.0.0.1", "target": 53, "published": "5353", "protocol": "udp"}]
    ports += ["127.0.0.1:5353:53", {"target": 53, "published": 53, "protocol": "tcp"}]
    doc, _ = render(yaml.safe_dump({"services": {"dns": {"ports": ports}}}), image_id=None)
    assert doc["services"]["dns"]["ports"] == [
        {"target": 53, "published": 53, "protocol": "tcp"},
        {"target": 53, "published": 5353, "protocol": "udp", "mode": "host"},
    ]


def test_render_labels_each_service_with_its_local_image_id() -> None:
    doc, _ = render(COMPOSE_V2)
    for name, svc in doc["services"].items():
        assert svc["labels"] == {"org.flaskstack.image-id": IMAGE_IDS[svc["image"]]}, name


def test_render_with_images_from_a_registry_adds_no_labels() -> None:
    doc, _ = render(COMPOSE_V2, image_id=None)
    assert all("labels" not in svc for svc in doc["services"].values())


def test_render_stops_when_a_local_image_is_missing() -> None:
    ids = {**IMAGE_IDS, "flaskstack/nginx:local": ""}
    with pytest.raises(swarm_render.RenderError) as caught:
        render(COMPOSE_V2, image_id=ids.get)
    assert str(caught.value) == (
        "swarm.sh: image flaskstack/nginx:local (nginx) is not on this machine: make images"
    )


def test_render_compose_v1_service() -> None:
    doc, lost = render(COMPOSE_V1_SERVICE, mode="host")
    svc = doc["services"]["metrics"]
    assert svc["ports"] == [
        # The long form first; "127.0.0.1:9102:9102/tcp" is left out: 9102 is published.
        {"target": 9102, "published": 9102, "protocol": "tcp", "mode": "ingress"},
        {"target": 9125, "published": 9125, "protocol": "udp", "mode": "host"},
        {"target": 9100, "published": 9200, "protocol": "tcp", "mode": "host"},
    ]
    assert svc["labels"] == {
        "com.example.team": "ops",
        "com.example.note": "a=b",
        "org.flaskstack.image-id": IMAGE_IDS["prom/statsd-exporter:v0.26.0"],
    }
    assert svc["deploy"] == {
        "resources": {"limits": {"memory": "64m", "cpus": "0.5", "pids": 64}},
        "restart_policy": {"condition": "on-failure", "delay": "5s", "max_attempts": 3},
    }
    assert tmpfs_mounts(svc) == [("/tmp", 8 * 2**20), ("/run", None)]
    assert lost == [f"{UID_NOTE}: metrics /tmp"]


@pytest.mark.parametrize("port", ["8080", "8000-8002:8000-8002", "127.0.0.1:8080:http"])
def test_render_refuses_ports_swarm_cannot_publish(port: str) -> None:
    doc = {"services": {"web": {"ports": [port]}}}
    with pytest.raises(swarm_render.RenderError) as caught:
        swarm_render.to_stack(doc, {}, None)
    assert str(caught.value) == f"swarm.sh: cannot publish web port {port!r} on Swarm"


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, str]:
    """An environment whose `docker image inspect -f {{.Id}} IMAGE` knows IMAGE_IDS only."""
    cases = "".join(f'    "{image}") echo "{id_}" ;;\n' for image, id_ in IMAGE_IDS.items())
    docker = tmp_path / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3 $4" = "image inspect -f {{.Id}}" ] || exit 2\n'
        'case "$5" in\n'
        f"{cases}"
        '    *) echo "Error: No such image: $5" >&2; exit 1 ;;\n'
        "esac\n"
    )
    docker.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARM_", "COMPOSE_PROFILES"))}
    return {**env, "PATH": f"{tmp_path}{os.pathsep}{env['PATH']}"}


def run_render(stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """swarm_render.py as swarm.sh runs it."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "swarm_render.py")],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_render_command_writes_the_stack_file_and_reports_losses(fake_docker) -> None:
    result = run_render(COMPOSE_V1_SERVICE, {**fake_docker, "SWARM_PUBLISH_MODE": "ingress"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"swarm.sh: not applied on Swarm: {UID_NOTE}: metrics /tmp\n"
    doc = yaml.safe_load(result.stdout)
    assert doc["services"]["metrics"]["ports"][1]["mode"] == "ingress"
    assert doc["services"]["metrics"]["labels"]["org.flaskstack.image-id"] == "sha256:" + "d" * 64
    expected, _ = render(COMPOSE_V1_SERVICE, mode="ingress")
    assert result.stdout == yaml.safe_dump(expected, sort_keys=False)


def test_render_command_reads_the_profiles_from_the_environment(fake_docker) -> None:
    env = {**fake_docker, "SWARM_RESOLVE_IMAGE": "always", "COMPOSE_PROFILES": "backup"}
    result = run_render(COMPOSE_V1_PROFILES, env)
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load(result.stdout)["services"]) == ["app", "backup"]


def test_render_command_with_a_registry_does_not_ask_docker(fake_docker) -> None:
    env = {**fake_docker, "SWARM_RESOLVE_IMAGE": "always", "PATH": "/nonexistent"}
    result = run_render(COMPOSE_V2, env)
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr
        == f"swarm.sh: not applied on Swarm: {UID_NOTE}: postgres /var/run/postgresql\n"
    )
    doc = yaml.safe_load(result.stdout)
    assert "name" not in doc
    assert all("labels" not in svc for svc in doc["services"].values())


def test_render_command_fails_on_a_missing_image(fake_docker) -> None:
    result = run_render(COMPOSE_V2.replace("postgres:17-trixie", "postgres:18"), fake_docker)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "swarm.sh: image postgres:18 (postgres) is not on this machine: make images\n"
    )


# ---------------------------------------------------------------------------------------------
# swarm.sh render: the compose files, overlays and profiles of `make`, plus swarm.yml
# ---------------------------------------------------------------------------------------------


def swarm_sh_render(tmp_path: Path, settings: str, **environ: str) -> dict[str, Any]:
    """The stack file `swarm.sh render` prints for an env file with `settings` (needs compose)."""
    tmp_path.mkdir(exist_ok=True)
    env_file = tmp_path / "env"
    env_file.write_text(
        "".join(
            f"{k}={'x' * 40}\n"
            for k in ("SECRET_KEY", "JWT_SECRET_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD")
        )
        + "POSTGRES_MONITOR_PASSWORD=m0nitor\n"
        + settings
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWARM_", "MONITORING", "DATABASE_URL", "BASELINE", "BACKUP"))
    }
    env |= {"ENV_FILE": str(env_file), "SWARM_RESOLVE_IMAGE": "always", "SWARM_CLUSTER": "0"}
    env["SWARM_STATE_DIR"] = str(tmp_path / "state")  # where the secrets' files go
    result = subprocess.run(
        [str(SCRIPTS / "swarm.sh"), "render"],
        cwd=ROOT,
        env=env | environ,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "m0nitor" not in result.stdout
    return yaml.safe_load(result.stdout)


def test_swarm_render_of_the_monitoring_profile_holds_no_file_mount_or_password(
    tmp_path: Path,
) -> None:
    """swarm.sh render with MONITORING=1: what `docker stack deploy` gets on several nodes."""
    services = swarm_sh_render(tmp_path, "MONITORING=1\n")["services"]
    assert {"prometheus", "nginx-exporter", "monitor-role", "postgres-exporter"} <= set(services)
    for name in ("prometheus", "monitor-role"):
        assert all(":/etc/" not in str(v) for v in services[name].get("volumes", [])), name
    targets = {c["target"] for c in services["prometheus"]["configs"]}
    assert targets == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules.yml"}
    assert "ports" not in services["prometheus"]
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_PASS_FILE"]
    assert services["monitor-role"]["environment"]["POSTGRES_MONITOR_PASSWORD_FILE"]
    for name in ("prometheus", "nginx-exporter", "postgres-exporter"):
        assert services[name]["deploy"]["endpoint_mode"] == "dnsrr", name


MIB = 2**20
ANY = {"condition": "any", "delay": "2s"}
ONE_SHOT = {"condition": "on-failure", "delay": "5s", "max_attempts": 20}
# What each service gets on Swarm: memory and CPU limits, tmpfs mounts (MiB; nginx's are
# volumes), restart policy and endpoint mode, as the former Swarm overlays wrote them by hand.
EXPECTED = {
    "app": ((256 * MIB, 1.0), [("/tmp", 64)], ANY, "dnsrr"),
    "migrate": ((256 * MIB, 1.0), [("/tmp", 64)], ONE_SHOT, "dnsrr"),
    "nginx": ((128 * MIB, None), [], ANY, None),
    "postgres": (
        (512 * MIB, None),
        [("/tmp", 16), ("/var/run/postgresql", 1), ("/dev/shm", 128)],
        ANY,
        "dnsrr",
    ),
    "prometheus": ((512 * MIB, None), [], ANY, "dnsrr"),
    "nginx-exporter": ((64 * MIB, None), [], ANY, "dnsrr"),
    "monitor-role": ((64 * MIB, None), [], ONE_SHOT, "dnsrr"),
    "postgres-exporter": ((64 * MIB, None), [], ANY, "dnsrr"),
}
BUNDLED_ONLY = {"postgres", "monitor-role", "postgres-exporter"}
MONITORING_ONLY = {"prometheus", "nginx-exporter", "monitor-role", "postgres-exporter"}
SETUPS = [
    pytest.param(monitoring, url, id=f"MONITORING={monitoring},DATABASE_URL={'set' if url else ''}")
    for monitoring in ("0", "1")
    for url in ("", "postgresql+psycopg2://u:p@db.example.com/app")
]


def translated(doc: dict[str, Any]) -> dict[str, tuple]:
    """EXPECTED's view of every service of a rendered stack file."""
    view = {}
    for name, svc in doc["services"].items():
        limits = svc["deploy"].get("resources", {}).get("limits", {})
        memory = swarm_render.size_bytes(limits["memory"]) if "memory" in limits else None
        cpus = float(limits["cpus"]) if "cpus" in limits else None
        mounts = [(path, size // MIB) for path, size in tmpfs_mounts(svc)]
        deploy = svc["deploy"]
        view[name] = ((memory, cpus), mounts, deploy["restart_policy"], deploy.get("endpoint_mode"))
    return view


def setup_settings(monitoring: str, database_url: str) -> str:
    """An env file's settings for one setup; the baseline and backups on, which Swarm skips."""
    return f"MONITORING={monitoring}\nDATABASE_URL={database_url}\nBASELINE=1\nBACKUP_SCHEDULE=1\n"


@pytest.mark.parametrize(("monitoring", "database_url"), SETUPS)
def test_swarm_render_translates_every_service_of_each_setup(
    tmp_path: Path, monitoring: str, database_url: str
) -> None:
    doc = swarm_sh_render(tmp_path, setup_settings(monitoring, database_url))
    wanted = set(EXPECTED)
    if monitoring == "0":
        wanted -= MONITORING_ONLY
    if database_url:
        wanted -= BUNDLED_ONLY
    assert translated(doc) == {name: EXPECTED[name] for name in wanted}
    assert doc["volumes"]["nginx-etc-nginx-conf-d"]["driver_opts"]["o"] == (
        "size=1m,uid=101,gid=101"
    )
    assert "driver_opts" not in (doc["volumes"]["uploads"] or {})


COMPOSE_V2_BINARY = ROOT / "build" / "bin" / "docker-compose"


@pytest.mark.parametrize(("monitoring", "database_url"), SETUPS)
def test_swarm_render_is_the_same_with_compose_v2(
    tmp_path: Path, monitoring: str, database_url: str
) -> None:
    """v2's `config` leaves inactive profiles out and prints long forms; the stack is the same."""
    assert COMPOSE_V2_BINARY.exists(), "Compose v2 is missing: make compose-v2 (test-unit runs it)"
    settings = setup_settings(monitoring, database_url)
    v1 = swarm_sh_render(tmp_path / "v1", settings)
    path = f"{COMPOSE_V2_BINARY.parent}{os.pathsep}{os.environ['PATH']}"
    v2 = swarm_sh_render(tmp_path / "v2", settings, PATH=path)
    assert translated(v2) == translated(v1)
    for name, svc in v1["services"].items():
        assert v2["services"][name].get("ports") == svc.get("ports"), name


def test_swarm_render_passes_the_uploads_settings(tmp_path: Path) -> None:
    """The test cluster's settings (cluster.sh's state file), as any bind or NFS user's."""
    settings = "SWARM_UPLOADS_TYPE=none\nSWARM_UPLOADS_OPTIONS=bind\n"
    doc = swarm_sh_render(tmp_path, settings, SWARM_UPLOADS_DEVICE="/srv/flaskstack/uploads")
    assert doc["volumes"]["uploads"]["driver_opts"] == {
        "type": "none",
        "device": "/srv/flaskstack/uploads",
        "o": "bind",
    }


# ---------------------------------------------------------------------------------------------
# swarm_status.py
# ---------------------------------------------------------------------------------------------

STACK = "flaskstack-swarm"
SINCE = "2025-03-04T10:15:00"  # `date -u +%Y-%m-%dT%H:%M:%S` when `up` deployed


def task_template(image: str, image_id: str, condition: str = "any") -> dict[str, Any]:
    """A service's TaskTemplate as `docker service inspect` shows it."""
    return {
        "ContainerSpec": {
            "Image": image,
            "Labels": {
                "com.docker.stack.namespace": STACK,
                "org.flaskstack.image-id": image_id,
            },
            "Env": ["APP_ENV=production", "SHUTDOWN_DELAY=5"],
            "Privileges": {"CredentialSpec": None, "SELinuxContext": None},
            "Init": False,
            "ReadOnly": True,
            "StopGracePeriod": 30000000000,
            "Mounts": [
                {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 67108864}}
            ],
            "DNSConfig": {},
            "Isolation": "default",
            "CapabilityDrop": ["ALL"],
        },
        "Resources": {"Limits": {"NanoCPUs": 1000000000, "MemoryBytes": 268435456}},
        "RestartPolicy": {"Condition": condition, "Delay": 2000000000, "MaxAttempts": 0},
        "Placement": {"Platforms": [{"Architecture": "amd64", "OS": "linux"}]},
        "Networks": [{"Target": "k2v0m1l8", "Aliases": ["app"]}],
        "ForceUpdate": 0,
        "Runtime": "container",
    }


def task_spec(template: dict[str, Any]) -> dict[str, Any]:
    """The same spec as a task carries it: no Runtime, no empty or false fields."""
    spec = copy.deepcopy(template)
    del spec["Runtime"], spec["ForceUpdate"]
    container = spec["ContainerSpec"]
    del container["Privileges"], container["Init"], container["DNSConfig"]
    del spec["RestartPolicy"]["MaxAttempts"]
    return spec


def service(
    name: str, sid: str, replicas: int, template: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One element of `docker service inspect`."""
    return {
        "ID": sid,
        "Version": {"Index": 812},
        "CreatedAt": "2025-03-04T09:02:11.31874Z",
        "UpdatedAt": "2025-03-04T10:15:02.1120913Z",
        "Spec": {
            "Name": f"{STACK}_{name}",
            "Labels": {"com.docker.stack.namespace": STACK},
            "TaskTemplate": template,
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Mode": "dnsrr"},
        },
        "Endpoint": {"Spec": {"Mode": "dnsrr"}},
        **extra,
    }


def task(
    svc: dict[str, Any],
    slot: int,
    state: str,
    *,
    spec: dict[str, Any] | None = None,
    desired: str = "running",
    created: str = "2025-03-04T10:15:03.0Z",
    updated: str = "2025-03-04T10:15:20.0Z",
    err: str = "",
) -> dict[str, Any]:
    """One element of `docker inspect` on the service's tasks."""
    status: dict[str, Any] = {
        "Timestamp": updated,
        "State": state,
        "Message": state,
        "ContainerStatus": {"ContainerID": f"c{slot}{state}", "PID": 0, "ExitCode": 0},
        "PortStatus": {},
    }
    if err:
        status["Err"] = err
    return {
        "ID": f"t{svc['ID']}{slot}{state}{created[-6:-3]}",
        "Version": {"Index": 830},
        "CreatedAt": created,
        "UpdatedAt": updated,
        "Labels": {},
        "Spec": spec if spec is not None else task_spec(svc["Spec"]["TaskTemplate"]),
        "ServiceID": svc["ID"],
        "Slot": slot,
        "NodeID": "n0d3",
        "Status": status,
        "DesiredState": desired,
    }


NEW_ID = "sha256:" + "1" * 64
OLD_ID = "sha256:" + "0" * 64
APP = service("app", "s1app", 3, task_template("flaskstack/app:local", NEW_ID))
MIGRATE = service(
    "migrate", "s2mig", 1, task_template("flaskstack/app:local", NEW_ID, "on-failure")
)
NGINX = service("nginx", "s3ngx", 1, task_template("flaskstack/nginx:local", "sha256:" + "2" * 64))
UPDATE_DONE = {
    "State": "completed",
    "StartedAt": "2025-03-04T10:15:02.2Z",
    "CompletedAt": "2025-03-04T10:16:10.7Z",
    "Message": "update completed",
}


def healthy_stack() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Services and tasks of a stack that is up: the migration done, every replica running."""
    services = [copy.deepcopy(s) for s in (NGINX, APP, MIGRATE)]
    tasks = [task(APP, slot, "running") for slot in (1, 2, 3)]
    tasks += [
        task(MIGRATE, 1, "failed", desired="shutdown", err="task: non-zero exit (1)"),
        task(MIGRATE, 1, "complete", desired="shutdown", created="2025-03-04T10:15:09.0Z"),
        task(NGINX, 1, "running"),
        # The replica the rolling update replaced.
        task(APP, 1, "shutdown", desired="shutdown", created="2025-03-04T09:02:12.0Z"),
    ]
    return services, tasks


def pending(services: list, tasks: list, since: str = SINCE) -> list[str]:
    return list(swarm_status.pending(services, tasks, since))


def test_status_norm_matches_a_task_spec_to_its_service_template() -> None:
    template = task_template("flaskstack/app:local", NEW_ID)
    assert template != task_spec(template)
    assert swarm_status.norm(template) == swarm_status.norm(task_spec(template))
    assert swarm_status.norm(
        {"A": {"Runtime": "x", "B": [{"C": False, "D": 0, "E": True}], "F": None, "G": ""}}
    ) == {"A": {"B": [{"E": True}]}}


def test_status_a_healthy_stack_has_nothing_pending() -> None:
    assert pending(*healthy_stack()) == []


def test_status_counts_running_replicas_and_names_the_last_error() -> None:
    services, tasks = healthy_stack()
    tasks = [t for t in tasks if not (t["ServiceID"] == APP["ID"] and t["Slot"] == 3)]
    tasks += [
        task(APP, 3, "failed", desired="shutdown", updated="2025-03-04T10:15:30.0Z", err="old"),
        task(APP, 3, "rejected", desired="shutdown", updated="2025-03-04T10:15:50.0Z", err="new"),
        task(APP, 3, "starting", updated="2025-03-04T10:16:00.0Z"),
    ]
    assert pending(services, tasks) == [f"{STACK}_app: 2/3 running (last error: new)"]


def test_status_replicas_of_an_old_spec_do_not_count() -> None:
    services, tasks = healthy_stack()
    old = task_spec(task_template("flaskstack/app:local", OLD_ID))
    for t in tasks:
        if t["ServiceID"] == APP["ID"] and t["DesiredState"] == "running" and t["Slot"] != 1:
            t["Spec"] = old
    assert pending(services, tasks) == [f"{STACK}_app: 1/3 running"]


def test_status_a_replica_being_stopped_does_not_count() -> None:
    services, tasks = healthy_stack()
    # Start-first rolling update: the new task runs, the old one drains until it exits.
    tasks.append(task(APP, 2, "running", desired="shutdown", created="2025-03-04T09:02:12.0Z"))
    assert pending(services, tasks) == []
    tasks = [t for t in tasks if not (t["Slot"] == 2 and t["DesiredState"] == "running")]
    assert pending(services, tasks) == [f"{STACK}_app: 2/3 running"]


def test_status_too_many_replicas_are_pending() -> None:
    services, tasks = healthy_stack()
    tasks.append(task(APP, 4, "running"))
    assert pending(services, tasks) == [f"{STACK}_app: 4/3 running"]


def test_status_a_one_shot_counts_by_its_newest_task() -> None:
    services, tasks = healthy_stack()
    tasks.append(
        task(
            MIGRATE,
            1,
            "failed",
            desired="shutdown",
            created="2025-03-04T10:15:40.0Z",
            updated="2025-03-04T10:15:41.0Z",
            err="task: non-zero exit (2)",
        )
    )
    assert pending(services, tasks) == [
        f"{STACK}_migrate: failed (last error: task: non-zero exit (2))"
    ]
    no_tasks = [t for t in tasks if t["ServiceID"] != MIGRATE["ID"]]
    assert pending(services, no_tasks) == [f"{STACK}_migrate: not started"]


def test_status_an_update_in_progress_is_pending() -> None:
    services, tasks = healthy_stack()
    services[1]["UpdateStatus"] = {
        **UPDATE_DONE,
        "State": "updating",
        "Message": "update in progress",
    }
    del services[1]["UpdateStatus"]["CompletedAt"]
    assert pending(services, tasks) == [f"{STACK}_app: updating"]


def test_status_a_failed_update_of_this_deploy_is_fatal() -> None:
    services, tasks = healthy_stack()
    services[1]["UpdateStatus"] = {
        **UPDATE_DONE,
        "State": "rollback_completed",
        "Message": "rollback completed",
    }
    expected = [f"{STACK}_app: update rollback_completed: rollback completed", "FATAL"]
    assert pending(services, tasks) == expected
    # An older deploy's failure is history: the replicas decide.
    assert pending(services, tasks, since="2025-03-04T11:00:00") == []
    # `swarm.sh status` passes 0000: any failed update shows.
    assert pending(services, tasks, since="0000") == expected


def test_status_a_paused_update_without_completion_dates_from_its_start() -> None:
    services, tasks = healthy_stack()
    services[1]["UpdateStatus"] = {
        "State": "paused",
        "StartedAt": "2025-03-04T10:15:02.2Z",
        "Message": "update paused due to failure or early termination of task x1",
    }
    assert pending(services, tasks) == [
        f"{STACK}_app: update paused: update paused due to failure or early termination of task x1",
        "FATAL",
    ]
    assert pending(services, tasks, since="2025-03-04T10:16:00") == []


def inspect_output(services: list, tasks: list) -> str:
    """What pending() in swarm.sh pipes: two `docker ... inspect` arrays and an empty line."""
    tasks_json = json.dumps(tasks, indent=4) if tasks else "[]"
    return f"{json.dumps(services, indent=4)}\n\n{tasks_json}\n"


def test_status_reads_both_inspect_arrays() -> None:
    services, tasks = healthy_stack()
    assert swarm_status.read_documents(inspect_output(services, tasks)) == (services, tasks, None)
    assert swarm_status.read_documents(inspect_output(services, [])) == (services, [], None)
    nodes = [node("n0d3")]
    text = inspect_output(services, tasks) + "\n" + json.dumps(nodes, indent=4) + "\n"
    assert swarm_status.read_documents(text) == (services, tasks, nodes)


def node(nid: str, state: str = "ready", availability: str = "active") -> dict[str, Any]:
    """One element of `docker node inspect`."""
    return {"ID": nid, "Spec": {"Availability": availability}, "Status": {"State": state}}


def global_nginx() -> dict[str, Any]:
    svc = copy.deepcopy(NGINX)
    svc["Spec"]["Mode"] = {"Global": {}}
    return svc


def on_node(t: dict[str, Any], nid: str) -> dict[str, Any]:
    return {**t, "NodeID": nid, "ID": t["ID"] + nid}


def test_status_a_global_service_wants_a_task_on_every_node_that_takes_tasks() -> None:
    svc = global_nginx()
    nodes = [node("n1"), node("n2"), node("n3")]
    tasks = [on_node(task(svc, 0, "running"), n) for n in ("n1", "n2")]
    assert list(swarm_status.pending([svc], tasks, SINCE, nodes)) == [f"{STACK}_nginx: 2/3 running"]
    tasks.append(on_node(task(svc, 0, "running"), "n3"))
    assert not list(swarm_status.pending([svc], tasks, SINCE, nodes))
    # A node that is down or drained takes no task, and its stale task does not count.
    nodes = [node("n1"), node("n2"), node("n3", state="down")]
    assert not list(swarm_status.pending([svc], tasks[:2], SINCE, nodes))
    nodes = [node("n1"), node("n2", availability="drain"), node("n3")]
    assert list(swarm_status.pending([svc], tasks, SINCE, nodes)) == []
    # Without the nodes' list: one task is enough.
    assert not list(swarm_status.pending([svc], tasks[:1], SINCE))


def run_status(stdin: str, since: str) -> subprocess.CompletedProcess[str]:
    """swarm_status.py as swarm.sh runs it."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "swarm_status.py"), since],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_status_command_prints_one_line_per_pending_service_by_name() -> None:
    services, _ = healthy_stack()
    services[0]["UpdateStatus"] = {**UPDATE_DONE, "State": "updating"}
    result = run_status(inspect_output(services, []), SINCE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{STACK}_app: 0/3 running\n{STACK}_migrate: not started\n{STACK}_nginx: updating\n"
    )


def test_status_command_prints_nothing_for_a_healthy_stack() -> None:
    result = run_status(inspect_output(*healthy_stack()), "0000")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_status_command_judges_failed_updates_by_its_argument() -> None:
    services, tasks = healthy_stack()
    services[1]["UpdateStatus"] = {**UPDATE_DONE, "State": "paused", "Message": "paused"}
    stdin = inspect_output(services, tasks)
    assert run_status(stdin, SINCE).stdout == f"{STACK}_app: update paused: paused\nFATAL\n"
    assert run_status(stdin, "2025-03-04T11:00:00").stdout == ""


# ---------------------------------------------------------------------------------------------
# swarm_probe.py
# ---------------------------------------------------------------------------------------------


class Answer(http.server.BaseHTTPRequestHandler):
    """Answers with the server's configured status and headers."""

    server: FakeNginx

    def do_GET(self) -> None:
        status, headers = self.server.answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        body = b"" if status == 204 else b"ok"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class FakeNginx(http.server.ThreadingHTTPServer):
    """A local HTTP server standing in for nginx; set `answer = (status, headers)`."""

    answer: tuple[int, dict[str, str]] = (200, {"X-Served-By": "10.0.3.7:8000"})


@pytest.fixture
def nginx() -> Iterator[FakeNginx]:
    """FakeNginx on a free port, serving until the test ends."""
    server = FakeNginx(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url(server: FakeNginx) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/healthz"


def test_probe_passes_a_healthy_answer_through_nginx(nginx) -> None:
    assert swarm_probe.main(["swarm_probe.py", url(nginx)]) == 0


@pytest.mark.parametrize(
    "answer",
    [
        (200, {}),  # nginx answered itself: no upstream
        (200, {"X-Served-By": ""}),
        (204, {"X-Served-By": "10.0.3.7:8000"}),
        (404, {"X-Served-By": "10.0.3.7:8000"}),
        (502, {"X-Served-By": "10.0.3.7:8000"}),
    ],
)
def test_probe_fails_any_other_answer(nginx, answer, capsys) -> None:
    nginx.answer = answer
    assert swarm_probe.main(["swarm_probe.py", url(nginx)]) == 1
    assert capsys.readouterr().err.startswith(f"swarm_probe: {url(nginx)}: status {answer[0]}")


def test_probe_fails_when_nothing_listens(capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert swarm_probe.main(["swarm_probe.py", f"http://127.0.0.1:{port}/healthz"]) == 1
    assert "Connection refused" in capsys.readouterr().err


def test_probe_command_exit_status(nginx) -> None:
    command = [sys.executable, str(SCRIPTS / "swarm_probe.py"), url(nginx)]
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    nginx.answer = (503, {})
    assert subprocess.run(command, capture_output=True, check=False).returncode == 1
