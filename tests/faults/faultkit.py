"""Docker-side helpers for the fault tests: find, inspect, break and heal the stack's containers.

Load only ever goes to the published ports; docker is used to inject faults (kill, restart), to
observe (inspect, logs, psql inside the postgres container) and to heal between tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime

import requests

from tests import support
from tests.support import run, stack

REPLICAS = 3
NGINX_CONF = support.ROOT / "deploy" / "nginx" / "nginx.conf"


def project() -> str:
    return os.environ.get("PROJECT", "flaskstack")


def ids(service: str | None = None, all_states: bool = False) -> list[str]:
    """Container ids of the project (one service, or all), by compose's labels."""
    cmd = [
        "docker",
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        f"label=com.docker.compose.project={project()}",
    ]
    if service:
        cmd += ["--filter", f"label=com.docker.compose.service={service}"]
    if all_states:
        cmd.append("-a")
    return run(*cmd).stdout.split()


def inspect(*container_ids: str) -> list[dict]:
    if not container_ids:
        return []
    return json.loads(run("docker", "inspect", *container_ids).stdout)


@dataclass(frozen=True)
class Replica:
    id: str
    hostname: str  # what the app puts in X-Served-By
    ip: str  # on the edge network, what nginx connects to
    restarts: int
    started_at: str


def replicas() -> list[Replica]:
    """The running app replicas."""
    out = []
    for c in inspect(*ids("app")):
        nets = c["NetworkSettings"]["Networks"]
        edge = next(v for k, v in nets.items() if k.endswith("_edge"))
        out.append(
            Replica(
                id=c["Id"],
                hostname=c["Config"]["Hostname"],
                ip=edge["IPAddress"],
                restarts=c["RestartCount"],
                started_at=c["State"]["StartedAt"],
            )
        )
    return out


def health(container_id: str) -> str:
    """Health status while running ("starting", "healthy", ...), else the run state."""
    state = inspect(container_id)[0]["State"]
    if state["Status"] != "running":
        return state["Status"]
    return state.get("Health", {}).get("Status", "running")


def wait_healthy(timeout: float = 120) -> None:
    """Every container healthy (stack.sh wait), with exactly REPLICAS app replicas."""
    deadline = time.monotonic() + timeout
    while len(ids("app")) != REPLICAS and time.monotonic() < deadline:
        time.sleep(0.5)
    support.wait_healthy(timeout)
    assert len(ids("app")) == REPLICAS, "wrong number of app replicas"


def heal(timeout: float = 120) -> None:
    """Bring the stack back to REPLICAS healthy replicas and a running postgres, then wait."""
    for cid in ids("app", all_states=True) + ids("postgres", all_states=True):
        if inspect(cid)[0]["State"]["Status"] in ("exited", "created"):
            run("docker", "start", cid)
    if len(ids("app")) != REPLICAS:
        stack(
            "compose", "up", "-d", "--no-deps", "--no-recreate", "--scale", f"app={REPLICAS}", "app"
        )
    wait_healthy(timeout)


def wait_for(container_id: str, want: str, timeout: float = 60, poll: float = 0.1) -> float:
    """Poll a container's health (or run state) until it is `want`; return the wall time seen."""
    what = f"{container_id[:12]} to be {want}"
    return support.wait_for(lambda: health(container_id) == want, timeout, what, poll=poll)


def postgres_id() -> str:
    (pg,) = ids("postgres")
    return pg


def env_value(name: str, default: str) -> str:
    return stack("get", name, default).stdout.strip() or default


def psql(sql: str) -> list[list[str]]:
    """Run SQL in the postgres container (its local socket); rows as lists of strings."""
    user, db = env_value("POSTGRES_USER", "app"), env_value("POSTGRES_DB", "app")
    out = run(
        "docker", "exec", postgres_id(), "psql", "-U", user, "-d", db, "-At", "-F", "\t", "-c", sql
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def docker_time(stamp: str) -> float:
    """Docker's RFC 3339 nanosecond timestamps as epoch seconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + float("0." + (frac[:6] or "0"))


def nginx_log(since: float) -> tuple[list[dict], list[str]]:
    """nginx's access log entries (JSON) and error log lines since a wall-clock time."""
    (nginx,) = ids("nginx")
    result = run("docker", "logs", "--since", f"{since - 1:.3f}", nginx)
    access = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            try:
                access.append(json.loads(line))
            except ValueError:
                continue
    return access, result.stderr.splitlines()


def resolver_valid() -> float:
    """How long nginx keeps a DNS answer for `app` (`resolver ... valid=`), in seconds."""
    match = re.search(r"resolver \S+ valid=(\d+)s", NGINX_CONF.read_text())
    assert match, "nginx.conf has no `resolver ... valid=Ns`"
    return float(match[1])


def wait_nginx_forgets(url: str, addresses: set[str], since: float, timeout: float = 60) -> None:
    """Until nginx will never choose these removed replica addresses (ip:port) again.

    Requests go out until each address is either benched (nginx tried it since `since`, failed,
    and keeps it out for fail_timeout, longer than its DNS refresh) or dropped (a DNS refresh
    has happened since `since`, which nginx does every `valid` seconds).
    """
    valid = resolver_valid()
    probe = f"{url}/bench/json"

    def settled() -> bool:
        for _ in range(2 * REPLICAS + 2):
            with contextlib.suppress(requests.RequestException):
                requests.get(probe, timeout=5)
        if time.time() > since + valid + 1:
            return True
        access, _ = nginx_log(since)
        tried = {a for e in access for a in addresses if a in e.get("upstream", "")}
        return tried >= addresses

    support.wait_for(settled, timeout, f"nginx to forget {sorted(addresses)}", poll=0.2)


def published_ports() -> dict[str, list[tuple[str, str, str]]]:
    """Service -> [(container port, host ip, host port)] for every running container."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for c in inspect(*ids()):
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        for port, bindings in (c["NetworkSettings"]["Ports"] or {}).items():
            for b in bindings or []:
                out.setdefault(service, []).append((port, b["HostIp"], b["HostPort"]))
    return out


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading all
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(chunks) > 0:
                    head = b"".join(chunks)
                    if _complete(head):
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    """A full response by Content-Length (nginx's error pages always carry one)."""
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response, or None."""
    parts = response.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def json_body(response: bytes) -> dict | None:
    """The JSON object a raw HTTP response carries (Content-Type application/json, a body by
    Content-Length or chunked), or None when it carries anything else."""
    head, _, body = response.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if not headers.get(b"content-type", b"").startswith(b"application/json"):
        return None
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        data, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            data, rest = data + rest[:n], rest[n + 2 :]
        body = data
    elif b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
