"""Turn a rendered compose file into one `docker stack deploy` accepts.

deploy/scripts/swarm.sh (`render`, and so `up`) pipes compose's `config` of the files `make`
uses plus deploy/compose/swarm.yml through this:

    SWARM=1 deploy/scripts/stack.sh compose config | python3 deploy/scripts/swarm_render.py

The stack file goes to stdout and every compose key lost without a replacement to stderr; a
port Swarm cannot publish, a local image that is missing or half of the uploads settings ends
the run with exit status 1 and a message. The interpreter needs PyYAML (swarm.sh picks one
that has it). What Swarm spells differently is translated, so docker-compose.yml stays the one
place for limits, tmpfs mounts and restart rules; a value swarm.yml already sets under
`deploy` or `volumes` wins:

    compose                         on Swarm
    profiles not in COMPOSE_PROFILES  the service left out (compose v2's `config` leaves it out,
                                    1.29's keeps it), and `profiles` removed
    scale                           deploy.replicas
    deploy.replicas 0               the service left out (swarm.yml: static, devserver, backup;
                                    external-db.yml: the bundled Postgres's services)
    mem_limit, cpus, pids_limit     deploy.resources.limits memory, cpus (a string), pids
    tmpfs PATH:size=64m             a `type: tmpfs` volume with the size in bytes
    tmpfs PATH:size=1m,uid=101      Swarm's tmpfs has no uid, gid or mode: on a global service
                                    (one task per node) a tmpfs volume of the local driver,
                                    which has; elsewhere dropped (the mount takes the mode of
                                    the image's directory), reported once
    shm_size                        a tmpfs volume on /dev/shm of that size
    restart always|unless-stopped   deploy.restart_policy any, after 2 s (Swarm also replaces a
                                    task whose healthcheck fails)
    restart no|on-failure[:N]       a one-shot: on-failure, after 5 s, N times (20); swarm.sh
                                    waits until it completed and knows one-shots by this
    no published port               deploy.endpoint_mode dnsrr: a name resolves to each task,
                                    so nginx has one peer per replica, and no IPVS virtual IP
                                    drops pooled connections idle for 15 min (moby/moby#31208)
    ports with an address           published on every interface in SWARM_PUBLISH_MODE (Swarm
                                    cannot bind one address), unless a long-form port in
                                    swarm.yml publishes that container port
    prometheus's port               published only on SWARM_PROMETHEUS_PORT (no login)
    a bind mount of one file        a Swarm config, which reaches every node
    SECRET_ENV values               Swarm secrets, named in <KEY>_FILE (SWARM_SECRETS_DIR and
                                    SWARM_STACK: where the files go, see `to_secrets`)
    security_opt                    dropped: services on Engine API 1.41 cannot set
                                    no-new-privileges (cap_drop ALL and the user stay)
    dns_opt                         dropped: `docker stack deploy` refuses it
    build                           dropped: Swarm never builds (see SWARM_RESOLVE_IMAGE)
    depends_on                      dropped: swarm.sh deploys the migration first, and it
                                    waits for its database
    (local images)                  with SWARM_RESOLVE_IMAGE=never (the default) each service
                                    is labelled with its local image's id, so a rebuild under
                                    the same tag rolls out
    (SWARM_UPLOADS_TYPE, _DEVICE,   the `uploads` volume's local-driver options, so every node
    _OPTIONS)                       mounts the same files (NFS, or a directory on every node)

Other settings, from the environment: SWARM_PUBLISH_MODE (host) for ports converted from
compose's short form.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

# Keys Swarm ignores or refuses and that need no replacement here (the docstring says why).
DROPPED = ("security_opt", "build", "depends_on", "dns_opt")
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
SIZE = re.compile(r"(\d+)([bkmg]?)b?", re.IGNORECASE)
UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
SHM = "/dev/shm"  # noqa: S108  # the container's path that shm_size sizes
# How often Swarm runs a failing one-shot (restart "no") again before giving up.
ONE_SHOT_ATTEMPTS = 20
# The volume every node must share, and the settings that give it the local driver's options.
SHARED_VOLUME = "uploads"
SHARED_VOLUME_SETTINGS = {
    "type": "SWARM_UPLOADS_TYPE",
    "device": "SWARM_UPLOADS_DEVICE",
    "o": "SWARM_UPLOADS_OPTIONS",
}


class RenderError(Exception):
    """The compose file cannot be deployed as it is."""


def size_bytes(value: str | int) -> int:
    """Bytes of a compose size: 67108864, "64m", "1g"."""
    m = SIZE.fullmatch(str(value).strip())
    if not m:
        raise RenderError(f"swarm.sh: cannot read the size {value!r}")
    return int(m[1]) * UNITS[m[2].lower()]


def move_limits(svc: dict[str, Any]) -> None:
    """Move mem_limit, cpus and pids_limit into deploy.resources.limits, unless set there."""
    limits = svc["deploy"].setdefault("resources", {}).setdefault("limits", {})
    for key, limit in (("mem_limit", "memory"), ("cpus", "cpus"), ("pids_limit", "pids")):
        if key in svc:
            limits.setdefault(limit, svc.pop(key))
    if "cpus" in limits:
        limits["cpus"] = str(limits["cpus"])  # a number is refused


def mounted_targets(svc: dict[str, Any]) -> set[str]:
    """The container paths the service's `volumes` entries mount."""
    return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc.get("volumes", [])}


def move_tmpfs(name: str, svc: dict[str, Any], volumes: dict[str, Any]) -> list[str]:
    """Turn tmpfs and shm_size into tmpfs mounts; return "name path" of each dropped owner.

    Swarm's tmpfs mounts take a size only. A tmpfs with a uid, gid or mode on a global service
    becomes a tmpfs volume of the local driver instead, which takes them, declared in `volumes`:
    a node's volume is shared by the service's tasks there, and a global service has one. A
    path that the service's `volumes` already mount gets nothing.
    """
    entries = svc.pop("tmpfs", []) or []
    if isinstance(entries, str):
        entries = [entries]
    if "shm_size" in svc:
        entries.append(f"{SHM}:size={svc.pop('shm_size')}")
    mounted, lost = mounted_targets(svc), []
    for entry in entries:
        path, _, opts = entry.partition(":")
        if path in mounted:
            continue
        sizes = [o.partition("=")[2] for o in opts.split(",") if o.startswith("size=")]
        owner = [o for o in filter(None, opts.split(",")) if not o.startswith("size=")]
        mount: dict[str, Any] = {"type": "tmpfs", "target": path}
        if owner and svc["deploy"].get("mode") == "global":
            source = f"{name}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')}"
            driver_opts = {"type": "tmpfs", "device": "tmpfs", "o": opts}
            volumes[source] = {"driver": "local", "driver_opts": driver_opts}
            mount = {"type": "volume", "source": source, "target": path}
        elif owner:
            lost.append(f"{name} {path}")
        if sizes and mount["type"] == "tmpfs":
            mount["tmpfs"] = {"size": size_bytes(sizes[-1])}
        svc.setdefault("volumes", []).append(mount)
    return lost


def restart_policy(svc: dict[str, Any]) -> None:
    """Turn compose's `restart` into deploy.restart_policy, unless that is set."""
    if "restart" not in svc:
        return
    restart = svc.pop("restart")
    if restart in ("always", "unless-stopped"):
        policy = {"condition": "any", "delay": "2s"}
    elif restart in ("no", False):  # False: an unquoted `no` in YAML 1.1
        policy = {"condition": "on-failure", "delay": "5s", "max_attempts": ONE_SHOT_ATTEMPTS}
    elif str(restart).startswith("on-failure"):
        _, _, attempts = str(restart).partition(":")
        policy = {"condition": "on-failure", "delay": "5s", "max_attempts": int(attempts or 0)}
    else:
        raise RenderError(f"swarm.sh: unknown restart {restart!r}")
    svc["deploy"].setdefault("restart_policy", policy)


def active(svc: dict[str, Any], profiles: set[str]) -> bool:
    """Whether compose would start the service with `profiles` on; removes its `profiles`."""
    wanted = svc.pop("profiles", None)
    return not wanted or bool(profiles.intersection(wanted))


def swarm_ports(name: str, ports: list[Any], mode: str) -> list[dict[str, Any]]:
    """Ports without a host address: the long-form ones first, then those with an address.

    A port with an address is compose's (short form in 1.29, host_ip in v2): Swarm publishes it
    on every interface in `mode`, unless another port already publishes its container port
    and protocol.
    """
    result, published, addressed = [], set(), []
    for port in ports:
        if isinstance(port, dict) and "host_ip" not in port:
            if str(port.get("published", "")).isdigit():
                port["published"] = int(port["published"])  # compose v2 prints a string
            result.append(port)
            published.add((int(port["target"]), port.get("protocol", "tcp")))
        elif isinstance(port, dict):
            target, protocol = int(port["target"]), port.get("protocol", "tcp")
            addressed.append((target, port["published"], protocol))
        else:
            m = SHORT_PORT.fullmatch(str(port))
            if not m:
                raise RenderError(f"swarm.sh: cannot publish {name} port {port!r} on Swarm")
            addressed.append((int(m[3]), m[2], m[4] or "tcp"))
    for target, host_port, protocol in addressed:
        if (target, protocol) not in published:
            result.append(
                {"target": target, "published": int(host_port), "protocol": protocol, "mode": mode}
            )
            published.add((target, protocol))
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


def name_file_secrets(doc: dict[str, Any], prefix: str) -> None:
    """Name every secret the compose file reads from a file `<prefix>_<key>_<hash of it>`, in
    place: a Swarm secret cannot change, so a new value is a new secret, and a redeploy with the
    same values changes nothing. Services keep mounting it at /run/secrets/<key>."""
    for sid, spec in (doc.get("secrets") or {}).items():
        if not isinstance(spec, dict) or "file" not in spec or "name" in spec:
            continue
        try:
            content = Path(spec["file"]).read_bytes()
        except OSError as exc:
            raise RenderError(
                f"swarm.sh: secret {sid}: cannot read {spec['file']} ({exc})"
            ) from None
        spec["name"] = f"{prefix}_{sid}_{hashlib.sha256(content).hexdigest()[:12]}"
    for svc in doc.get("services", {}).values():
        refs = svc.get("secrets")
        if refs:
            svc["secrets"] = [
                {"source": ref, "target": ref}
                if isinstance(ref, str)
                else {"target": ref["source"], **ref}
                for ref in refs
            ]


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


def opt_in_ports(doc: dict[str, Any], mode: str, environ: Mapping[str, str]) -> None:
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


def round_robin(doc: dict[str, Any]) -> None:
    """DNS round robin (endpoint_mode dnsrr) for every service that publishes no port."""
    for svc in doc.get("services", {}).values():
        if not svc.get("ports"):
            svc["deploy"].setdefault("endpoint_mode", "dnsrr")


def shared_volume(doc: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Give SHARED_VOLUME the local driver's options from SHARED_VOLUME_SETTINGS, if set."""
    opts = {opt: environ.get(var, "") for opt, var in SHARED_VOLUME_SETTINGS.items()}
    if not any(opts.values()):
        return
    if not (opts["type"] and opts["device"]):
        raise RenderError(
            "swarm.sh: SWARM_UPLOADS_TYPE and SWARM_UPLOADS_DEVICE go together (docs/swarm.md)"
        )
    volumes = doc.setdefault("volumes", {})
    volume = volumes.get(SHARED_VOLUME) or {}
    volume["driver"] = "local"
    volume["driver_opts"] = {k: v for k, v in opts.items() if v}
    volumes[SHARED_VOLUME] = volume


def only(doc: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The stack file `doc` with only the services `names` (those it has)."""
    doc["services"] = {k: v for k, v in doc.get("services", {}).items() if k in names}
    return doc


def to_stack(
    doc: dict[str, Any], environ: Mapping[str, str], image_id: Callable[[str], str] | None
) -> list[str]:
    """Rewrite the compose document `doc` in place for Swarm; return what was lost.

    `environ` holds the settings (COMPOSE_PROFILES, SWARM_PUBLISH_MODE, SWARM_PROMETHEUS_PORT,
    SWARM_UPLOADS_*); `image_id` looks up a local image's id (None: images come from a
    registry, no labels).
    """
    doc.pop("name", None)  # compose v2
    doc.setdefault("version", "3.9")
    mode = environ.get("SWARM_PUBLISH_MODE", "host")
    profiles = set(filter(None, environ.get("COMPOSE_PROFILES", "").split(",")))
    lost, no_uid, tmpfs_volumes = [], [], {}
    for name, svc in list(doc.get("services", {}).items()):
        deploy = svc.setdefault("deploy", {})
        if "scale" in svc:
            deploy.setdefault("replicas", svc.pop("scale"))
        if not active(svc, profiles) or deploy.get("replicas", 1) == 0:
            del doc["services"][name]
            continue
        move_limits(svc)
        no_uid += move_tmpfs(name, svc, tmpfs_volumes)
        restart_policy(svc)
        for key in DROPPED:
            svc.pop(key, None)
        ports = swarm_ports(name, svc.get("ports", []), mode)
        if ports:
            svc["ports"] = ports
        if image_id is not None and "image" in svc:
            label_image(name, svc, image_id)
    if tmpfs_volumes:
        doc.setdefault("volumes", {}).update(tmpfs_volumes)
    opt_in_ports(doc, mode, environ)
    round_robin(doc)
    shared_volume(doc, environ)
    if no_uid:
        # Once for all: the mount takes the owner and mode of the image's directory.
        lost.append(f"tmpfs uid, gid and mode (Swarm has none): {', '.join(no_uid)}")
    return lost


def main() -> int:
    """Read the compose file on stdin, write the stack file to stdout."""
    doc = yaml.safe_load(sys.stdin)
    if not isinstance(doc, dict):
        sys.exit("swarm.sh: no compose file to render (compose's error above)")
    if sys.argv[1:2] == ["--only"]:
        yaml.safe_dump(only(doc, sys.argv[2].split(",")), sys.stdout, sort_keys=False)
        return 0
    local = os.environ.get("SWARM_RESOLVE_IMAGE", "never") == "never"
    secrets_dir = os.environ.get("SWARM_SECRETS_DIR")
    prefix = os.environ.get("SWARM_STACK", "flaskstack-swarm")
    try:
        lost = to_stack(doc, os.environ, local_image_id if local else None)
        to_configs(doc, prefix)
        name_file_secrets(doc, prefix)
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
