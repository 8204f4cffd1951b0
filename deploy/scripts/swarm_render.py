"""Turn a rendered compose file into one `docker stack deploy` accepts.

deploy/scripts/swarm.sh (`render`, and so `up`) pipes `docker compose config` through this:

    ... compose -f docker-compose.swarm.yml config | python3 deploy/scripts/swarm_render.py

The stack file goes to stdout and every compose key lost without a replacement to stderr; a
port Swarm cannot publish or a local image that is missing ends the run with exit status 1 and
a message. The interpreter needs PyYAML (swarm.sh picks one that has it). Settings, from the
environment: SWARM_PUBLISH_MODE (host) for ports converted from compose's short form, and
SWARM_RESOLVE_IMAGE (never), with which each service is labelled with its local image's id.
What is dropped or rewritten, and why, is listed in swarm.sh above its `render`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import yaml

# Keys Swarm ignores or refuses and that need no replacement here (swarm.sh says why).
DROPPED = ("shm_size", "restart", "security_opt", "build", "depends_on", "dns_opt")
IMAGE_ID_LABEL = "org.flaskstack.image-id"
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
    mode = os.environ.get("SWARM_PUBLISH_MODE", "host")
    local = os.environ.get("SWARM_RESOLVE_IMAGE", "never") == "never"
    try:
        lost = to_stack(doc, mode, local_image_id if local else None)
    except RenderError as exc:
        sys.exit(str(exc))
    for line in lost:
        print(f"swarm.sh: not applied on Swarm: {line}", file=sys.stderr)
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
