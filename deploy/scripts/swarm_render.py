"""Turn a rendered compose file into one `docker stack deploy` accepts.

deploy/scripts/swarm.sh (`render`, and so `up`) pipes `docker compose config` through this:

    ... compose -f docker-compose.swarm.yml config | python3 deploy/scripts/swarm_render.py

The stack file goes to stdout and every compose key lost without a replacement to stderr; a
port Swarm cannot publish or a local image that is missing ends the run with exit status 1 and
a message. The interpreter needs PyYAML (swarm.sh picks one that has it). Settings, from the
environment: SWARM_PUBLISH_MODE (host) for ports converted from compose's short form,
SWARM_RESOLVE_IMAGE (never), with which each service is labelled with its local image's id, and
SWARM_SECRETS_DIR with SWARM_STACK: where the secrets' files are written (see `to_secrets`).
What is dropped or rewritten, and why, is listed in swarm.sh above its `render`.

    python3 deploy/scripts/swarm_render.py --only postgres,migrate <stack.yml

prints a rendered stack file with only the services named (swarm.sh deploys those first, so the
migration has run before any replica of a new image starts).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# Keys Swarm ignores or refuses and that need no replacement here (swarm.sh says why).
DROPPED = ("shm_size", "restart", "security_opt", "build", "depends_on", "dns_opt")
IMAGE_ID_LABEL = "org.flaskstack.image-id"
# Environment variables that go to Swarm as secrets: the service gets <KEY>_FILE, a file under
# /run/secrets, instead (the app and the Postgres image read both forms), so neither
# `docker inspect` nor `docker service inspect` shows them.
SECRET_ENV = (
    "SECRET_KEY",
    "JWT_SECRET_KEY",
    "DATABASE_URL",
    "ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "POSTGRES_MONITOR_PASSWORD",
    "DATA_SOURCE_PASS",  # the Postgres exporter's (it reads DATA_SOURCE_PASS_FILE too)
)
# Published on Swarm only when the variable names a port: Swarm cannot bind 127.0.0.1, and
# Prometheus's pages have no login.
OPT_IN_PORTS = {"prometheus": "SWARM_PROMETHEUS_PORT"}
SHORT_PORT = re.compile(r"(?:(.*):)?(\d+):(\d+)(?:/(tcp|udp))?")


class RenderError(Exception):
    """The compose file cannot be deployed as it is."""


def move_limits(name: str, svc: dict[str, Any]) -> list[str]:
    """Move pids_limit into deploy.resources.limits and drop mem_limit and cpus; report losses."""
    limits = svc["deploy"].setdefault("resources", {}).setdefault("limits", {})
    if "cpus" in limits:
        limits["cpus"] = str(limits["cpus"])
    if "pids_limit" in svc:
        limits.setdefault("pids", svc.pop("pids_limit"))
    lost = []
    if svc.pop("mem_limit", None) and "memory" not in limits:
        lost.append(f"{name}: mem_limit (set deploy.resources.limits.memory)")
    if svc.pop("cpus", None) and "cpus" not in limits:
        lost.append(f"{name}: cpus (set deploy.resources.limits.cpus)")
    return lost


def drop_tmpfs(name: str, svc: dict[str, Any]) -> list[str]:
    """Drop the tmpfs key; report each path that no entry under `volumes` mounts instead."""
    mounts = {
        v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes", [])
    }
    return [
        f"{name}: tmpfs {entry} (add a tmpfs volume)"
        for entry in svc.pop("tmpfs", []) or []
        if entry.split(":", 1)[0] not in mounts
    ]


def swarm_ports(name: str, ports: list[Any], mode: str) -> list[dict[str, Any]]:
    """Ports without a host address: long-form ones first, then short-form ones in `mode`.

    A short-form port whose container port a long-form one already publishes is left out.
    """
    result, published = [], set()
    for port in ports:
        if isinstance(port, dict):
            port.pop("host_ip", None)  # compose v2's long form
            result.append(port)
            published.add(int(port["target"]))
    for port in ports:
        if isinstance(port, str):
            m = SHORT_PORT.fullmatch(port)
            if not m:
                raise RenderError(f"swarm.sh: cannot publish {name} port {port!r} on Swarm")
            if int(m[3]) not in published:
                result.append(
                    {
                        "target": int(m[3]),
                        "published": int(m[2]),
                        "protocol": m[4] or "tcp",
                        "mode": mode,
                    }
                )
    return result


def local_image_id(image: str) -> str:
    """The id of the local image `image`, or "" when this machine does not have it."""
    return subprocess.run(  # noqa: S603
        ["docker", "image", "inspect", "-f", "{{.Id}}", image],  # noqa: S607
        capture_output=True,
        text=True,
    ).stdout.strip()


def label_image(name: str, svc: dict[str, Any], image_id: Callable[[str], str]) -> None:
    """Label the service's containers with its image's id.

    Swarm updates a service when its spec changes, and a rebuilt image under the same tag
    changes nothing there: the local image's id, as a container label, does.
    """
    found = image_id(svc["image"])
    if not found:
        raise RenderError(
            f"swarm.sh: image {svc['image']} ({name}) is not on this machine: make images"
        )
    labels = svc.setdefault("labels", {})
    if isinstance(labels, list):
        labels = svc["labels"] = dict(item.split("=", 1) for item in labels)
    labels[IMAGE_ID_LABEL] = found


def to_secrets(doc: dict[str, Any], secrets_dir: Path, prefix: str) -> None:
    """Move the SECRET_ENV values of every service into Swarm secrets, in place.

    Each value is written to `secrets_dir/<key>` (mode 0600) and declared as a secret named
    `<prefix>_<key>_<hash of the value>`: a Swarm secret cannot change, so a new value is a new
    secret, and a redeploy with the same values changes nothing.
    """
    values: dict[str, str] = {}
    for name, svc in doc.get("services", {}).items():
        env = svc.get("environment")
        if isinstance(env, list):  # compose's list form: KEY=value
            env = svc["environment"] = dict(item.split("=", 1) for item in env)
        for key in SECRET_ENV:
            value = (env or {}).get(key)
            if not value:
                continue
            sid = key.lower()
            if values.setdefault(sid, value) != value:
                raise RenderError(f"swarm.sh: {key} of {name} differs from another service's")
            del env[key]
            env[f"{key}_FILE"] = f"/run/secrets/{sid}"
            svc.setdefault("secrets", []).append({"source": sid, "target": sid})
    if not values:
        return
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    declared = doc.setdefault("secrets", {})
    for sid, value in values.items():
        path = secrets_dir / sid
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(value)
        digest = hashlib.sha256(value.encode()).hexdigest()[:12]
        declared[sid] = {"name": f"{prefix}_{sid}_{digest}", "file": str(path)}


def to_configs(doc: dict[str, Any], prefix: str) -> None:
    """Turn every bind mount of a single file into a Swarm config, in place.

    A bind mount needs the file at the same path on whichever node runs the task; a config
    travels with the stack to every node. Named `<prefix>_<file name>_<hash of its content>`,
    as a config cannot change. Directories stay bind mounts.
    """
    declared = doc.setdefault("configs", {})
    for svc in doc.get("services", {}).values():
        kept = []
        for volume in svc.get("volumes", []):
            if isinstance(volume, dict):
                source, target = volume.get("source", ""), volume.get("target", "")
                is_bind = volume.get("type") == "bind"
            else:
                source, _, rest = volume.partition(":")
                target = rest.split(":")[0]
                is_bind = source.startswith("/")
            path = Path(source)
            if not (is_bind and path.is_file()):
                kept.append(volume)
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            cid = re.sub(r"[^a-z0-9_]", "_", path.name.lower())
            declared[cid] = {"name": f"{prefix}_{cid}_{digest}", "file": str(path)}
            svc.setdefault("configs", []).append({"source": cid, "target": target, "mode": 0o444})
        if "volumes" in svc:
            svc["volumes"] = kept
    if not declared:
        del doc["configs"]


def opt_in_ports(doc: dict[str, Any], mode: str, environ: dict[str, str]) -> None:
    """Publish an OPT_IN_PORTS service on the port its variable names, or not at all."""
    for name, variable in OPT_IN_PORTS.items():
        svc = doc.get("services", {}).get(name)
        if svc is None or "ports" not in svc:
            continue
        port = environ.get(variable, "")
        targets = [p["target"] for p in svc.pop("ports")]
        if port:
            svc["ports"] = [
                {"target": t, "published": int(port), "protocol": "tcp", "mode": mode}
                for t in targets[:1]
            ]


def only(doc: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The stack file `doc` with only the services `names` (those it has)."""
    doc["services"] = {k: v for k, v in doc.get("services", {}).items() if k in names}
    return doc


def to_stack(doc: dict[str, Any], mode: str, image_id: Callable[[str], str] | None) -> list[str]:
    """Rewrite the compose document `doc` in place for Swarm; return what was lost.

    `image_id` looks up a local image's id (None: images come from a registry, no labels).
    """
    doc.pop("name", None)  # compose v2
    doc.setdefault("version", "3.9")
    lost = []
    for name, svc in list(doc.get("services", {}).items()):
        deploy = svc.setdefault("deploy", {})
        if deploy.get("replicas", 1) == 0:
            del doc["services"][name]
            continue
        lost += move_limits(name, svc)
        lost += drop_tmpfs(name, svc)
        for key in DROPPED:
            svc.pop(key, None)
        ports = swarm_ports(name, svc.get("ports", []), mode)
        if ports:
            svc["ports"] = ports
        if image_id is not None and "image" in svc:
            label_image(name, svc, image_id)
    return lost


def main() -> int:
    """Read the compose file on stdin, write the stack file to stdout."""
    doc = yaml.safe_load(sys.stdin)
    if sys.argv[1:2] == ["--only"]:
        yaml.safe_dump(only(doc, sys.argv[2].split(",")), sys.stdout, sort_keys=False)
        return 0
    mode = os.environ.get("SWARM_PUBLISH_MODE", "host")
    local = os.environ.get("SWARM_RESOLVE_IMAGE", "never") == "never"
    secrets_dir = os.environ.get("SWARM_SECRETS_DIR")
    prefix = os.environ.get("SWARM_STACK", "flaskstack-swarm")
    try:
        lost = to_stack(doc, mode, local_image_id if local else None)
        opt_in_ports(doc, mode, dict(os.environ))
        to_configs(doc, prefix)
        if secrets_dir:
            to_secrets(doc, Path(secrets_dir), prefix)
    except RenderError as exc:
        sys.exit(str(exc))
    for line in lost:
        print(f"swarm.sh: not applied on Swarm: {line}", file=sys.stderr)
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
