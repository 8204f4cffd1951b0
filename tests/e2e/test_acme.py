"""A domain with automatic certificates (DOMAIN, deploy/compose/acme.yml), for real and offline.

Pebble, Let's Encrypt's ACME test server, runs on a network of the stack's own, where the test
domain's names are aliases of nginx, so its HTTP-01 validation reaches nginx's plain-HTTP port
as Let's Encrypt's would reach port 80. The stack is a project of its own (its own env file,
ports and volumes, one replica), started with the settings a server would use, only the ACME
directory pointed at pebble. Shown: a certificate issued by pebble for both names; HTTPS with
HTTP/2 answering with it; a forced renewal picked up by nginx with no failed request under paced
load; a failed challenge leaving the old certificate serving, with the acme service saying so.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests

from tests.support import ROOT, free_port, run, stack, wait_for

DOMAINS = ("acme.flaskstack.test", "www.acme.flaskstack.test")
BUILD = ROOT / "deploy" / "images" / "build.sh"
NGINX_TEST_IMAGE = "flaskstack/nginx:acme-test"
# What the stack's own test environment exports, which would otherwise win over the env file.
INHERITED = (
    "APP_REPLICAS", "BASELINE", "DATABASE_URL", "MONITORING", "TLS_ENABLED", "REFERENCE", "DEV",
    "HSTS_MAX_AGE", "DOMAIN", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME",
    "NGINX_STACK_IMAGE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS",
)  # fmt: skip

# Pebble on the test network: the test domain resolves to nginx there (network aliases), and
# validation connects to nginx's plain-HTTP port inside the network, 8080.
FRAGMENT = """
services:
  nginx:
    networks:
      public: {{}}
      edge: {{}}
      validation:
        aliases: [{aliases}]
  acme:
    environment:
      LEGO_CA_CERTIFICATES: /etc/pebble/ca.crt
    volumes:
      - {pebble}/ca.crt:/etc/pebble/ca.crt:ro
    networks: [public, validation]
  pebble:
    image: {pebble_image}
    environment:
      PEBBLE_VA_NOSLEEP: "1"
      PEBBLE_WFE_NONCEREJECT: "0"
      PEBBLE_AUTHZREUSE: "0"
    volumes:
      - {pebble}/pebble-config.json:/test/config/pebble-config.json:ro
      - {pebble}/server.crt:/test/certs/localhost/cert.pem:ro
      - {pebble}/server.key:/test/certs/localhost/key.pem:ro
    ports:
      - "127.0.0.1:{management_port}:15000"
    networks: [validation]
networks:
  validation: {{}}
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("docker", *args, timeout=None, check=check)


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """The stack with DOMAIN set and pebble as its ACME directory, until the first certificate."""
    workdir = tmp_path_factory.mktemp("acme")
    run(str(BUILD), "acme-test", timeout=None)
    names = dict(
        line.split("=", 1) for line in run(str(BUILD), "names-acme").stdout.split() if "=" in line
    )
    nginx_base = run(str(BUILD), "names").stdout.split("NGINX_IMAGE=")[1].split()[0]
    # The stack's nginx image, under a name of its own.
    docker("build", "-q", "--build-arg", f"NGINX_IMAGE={nginx_base}", "-t", NGINX_TEST_IMAGE,
           str(ROOT / "deploy" / "nginx"))  # fmt: skip

    # Pebble's own HTTPS listener: a certificate for the name lego reaches it by.
    pebble = workdir / "pebble"
    run(str(ROOT / "deploy" / "scripts" / "certs.sh"), str(pebble), "pebble")
    config = json.loads((ROOT / "deploy" / "images" / "pebble" / "pebble-config.json").read_text())
    config["pebble"]["httpPort"] = 8080
    (pebble / "pebble-config.json").write_text(json.dumps(config))
    management_port = free_port()
    fragment = workdir / "acme-test.yml"
    fragment.write_text(
        FRAGMENT.format(
            aliases=", ".join(DOMAINS),
            pebble=pebble,
            pebble_image=names["PEBBLE_IMAGE"],
            management_port=management_port,
        )
    )

    extra_files = [str(fragment)]
    project = f"{os.environ.get('PROJECT', 'flaskstack-test')}-acme"
    env_file = workdir / "acme.env"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(PROJECT=project, ENV_FILE=str(env_file), NGINX_STACK_IMAGE=NGINX_TEST_IMAGE)
    stack("env", env=env)
    stack_port, tls_port = free_port(), free_port()
    settings = {
        "STACK_PORT": str(stack_port),
        "TLS_PORT": str(tls_port),
        "TLS_ENABLED": "1",
        "DOMAIN": ",".join(DOMAINS),
        "ACME_EMAIL": f"ops@{DOMAINS[0]}",
        "ACME_DIRECTORY": "https://pebble:14000/dir",
        "LEGO_IMAGE": names["LEGO_IMAGE"],
        "APP_REPLICAS": "1",
        "MONITORING": "0",
        "BASELINE": "0",
        "COMPOSE_EXTRA_FILES": " ".join(extra_files),
    }
    lines = [line for line in env_file.read_text().splitlines()
             if line.split("=", 1)[0] not in settings]  # fmt: skip
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in settings.items())]) + "\n")
    try:
        stack("up", "1", env=env, timeout=600)
        ctx = {
            "env": env,
            "project": project,
            "tls_port": tls_port,
            "stack_port": stack_port,
            "workdir": workdir,
            "pebble_ca": str(pebble / "ca.crt"),
            "management": f"https://127.0.0.1:{management_port}",
            "lego_image": names["LEGO_IMAGE"],
        }
        root = workdir / "pebble-root.pem"
        root.write_text(pebble_root(ctx))
        ctx["root"] = str(root)
        wait_for(lambda: handshake(ctx) is not None, 120, "the first certificate from pebble")
        yield ctx
    finally:
        logs = stack("compose", "logs", "--no-color", "acme", "nginx", env=env, check=False)
        (workdir / "stack.log").write_text(logs.stdout + logs.stderr)
        stack("compose", "down", "-v", "--remove-orphans", env=env, check=False, timeout=None)


def pebble_root(ctx) -> str:
    """Pebble's issuing root, from its management port (published on 127.0.0.1)."""
    r = requests.get(f"{ctx['management']}/roots/0", verify=ctx["pebble_ca"], timeout=10)
    r.raise_for_status()
    return r.text


def handshake(ctx, name: str = DOMAINS[0]) -> dict | None:
    """The certificate nginx presents for `name` (SNI), verified against pebble's root."""
    context = ssl.create_default_context(cafile=ctx["root"])
    try:
        with (
            socket.create_connection(("127.0.0.1", ctx["tls_port"]), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as conn,
        ):
            return conn.getpeercert()
    except (ssl.SSLError, OSError):
        return None


def get(ctx, path: str, name: str = DOMAINS[0]) -> tuple[int, str]:
    """GET over a new TLS connection with SNI `name`: (status, serial of the certificate)."""
    context = ssl.create_default_context(cafile=ctx["root"])
    with (
        socket.create_connection(("127.0.0.1", ctx["tls_port"]), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as conn,
    ):
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = conn.recv(1024).decode("latin-1")
        return int(head.split(" ", 2)[1]), conn.getpeercert()["serialNumber"]


class WebSocket:
    """A minimal client for /ws over TLS with SNI: text frames only, enough for hello and ping."""

    def __init__(self, ctx, name: str = DOMAINS[0]) -> None:
        context = ssl.create_default_context(cafile=ctx["root"])
        context.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", ctx["tls_port"]), timeout=10)
        self.conn = context.wrap_socket(raw, server_hostname=name)
        key = base64.b64encode(os.urandom(16)).decode()
        self.conn.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.conn.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            assert chunk, "the connection was closed"
            data += chunk
        return data

    def send(self, text: str, opcode: int = 0x1) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.conn.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def receive(self) -> str:
        """The next text message; the server's pings are answered on the way."""
        while True:
            first, second = self._exact(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self._exact(2), "big")
            elif length == 127:
                length = int.from_bytes(self._exact(8), "big")
            payload, opcode = self._exact(length).decode(), first & 0x0F
            assert opcode != 0x8, "the server closed the websocket"
            if opcode == 0x9:
                self.send(payload, opcode=0xA)
            elif opcode == 0x1:
                return payload

    def close(self) -> None:
        self.conn.close()


def container(ctx, service: str) -> str:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={ctx['project']}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).stdout.split()[0]  # fmt: skip


def acme_once(ctx, **env: str) -> subprocess.CompletedProcess[str]:
    flags = [f"--env={k}={v}" for k, v in env.items()]
    return docker("exec", *flags, container(ctx, "acme"), "sh", "/usr/local/bin/acme.sh", "once",
                  check=False)  # fmt: skip


def test_pebble_issued_a_certificate_for_every_name(acme):
    for name in DOMAINS:
        cert = handshake(acme, name)
        assert cert is not None, f"no verified handshake for {name}"
        assert {("DNS", n) for n in DOMAINS} <= set(cert["subjectAltName"])
        issuer = dict(pair[0] for pair in cert["issuer"])
        assert "Pebble" in issuer["commonName"]


def test_https_with_http2_answers_with_it(acme):
    port = acme["tls_port"]
    out = run(
        "curl", "-sS", "--http2", "--cacert", acme["root"],
        "--resolve", f"{DOMAINS[0]}:{port}:127.0.0.1",
        "-D", "-", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
        f"https://{DOMAINS[0]}:{port}/healthz",
    ).stdout  # fmt: skip
    assert out.endswith("2 200")
    # With a domain, HSTS is on by default (HSTS_MAX_AGE empty).
    assert "strict-transport-security: max-age=63072000" in out.lower()


def test_plain_http_serves_the_challenge_path_and_redirects_the_rest(acme):
    base = f"http://127.0.0.1:{acme['stack_port']}"
    headers = {"Host": DOMAINS[0]}
    r = requests.get(f"{base}/api/posts", headers=headers, allow_redirects=False, timeout=10)
    assert r.status_code == 308
    assert r.headers["Location"] == f"https://{DOMAINS[0]}:{acme['tls_port']}/api/posts"
    r = requests.get(f"{base}/.well-known/acme-challenge/missing", headers=headers,
                     allow_redirects=False, timeout=10)  # fmt: skip
    assert r.status_code == 404  # served from the challenge webroot, not redirected


def test_a_renewal_is_picked_up_without_a_failed_request(acme):
    """Forced renewal (ACME_RENEW_DAYS beyond the certificate's life) under paced load, each
    request on a new connection, and a websocket opened before the reload and used after it."""
    _, before = get(acme, "/healthz")
    results: list[tuple[int, str] | str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():  # about 20 requests/s, each on a new TLS connection
            try:
                results.append(get(acme, "/healthz"))
            except (OSError, ssl.SSLError, ValueError, IndexError) as e:
                results.append(repr(e))
            time.sleep(0.05)

    # A websocket open across the reload: the old worker keeps serving it.
    ws = WebSocket(acme)
    assert json.loads(ws.receive())["type"] == "hello"
    worker = threading.Thread(target=load)
    worker.start()
    try:
        renewal = acme_once(acme, ACME_RENEW_DAYS="100000")
        assert renewal.returncode == 0, renewal.stdout + renewal.stderr
        assert "installed a new certificate" in renewal.stderr
        wait_for(lambda: get(acme, "/healthz")[1] != before, 30, "nginx to serve the new one")
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 20, 30, "requests after the reload")
    finally:
        stop.set()
        worker.join()
    try:
        ws.send("ping")
        assert ws.receive() == "pong"
    finally:
        ws.close()
    failed = [r for r in results if not isinstance(r, tuple) or r[0] != 200]
    assert failed == [], failed[:5]
    serials = [r[1] for r in results]
    assert serials[0] == before and serials[-1] != before
    nginx_log = stack("compose", "logs", "--no-color", "nginx", env=acme["env"]).stdout
    assert "certificate changed: nginx reloaded gracefully" in nginx_log


def test_a_failed_challenge_keeps_the_old_certificate(acme):
    """The names stop leading to nginx on the validation network, as a DNS record pointing
    elsewhere would: pebble's validation finds nothing on port 8080 there."""
    _, before = get(acme, "/healthz")
    nginx = container(acme, "nginx")
    networks = docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", nginx).stdout
    (network,) = [n for n in json.loads(networks) if n.endswith("_validation")]
    elsewhere = f"{acme['project']}-elsewhere"
    docker("network", "disconnect", network, nginx)
    docker("run", "-d", "--rm", "--name", elsewhere, "--network", network,
           *[f"--network-alias={name}" for name in DOMAINS],
           "--entrypoint", "sleep", acme["lego_image"], "120")  # fmt: skip
    try:
        failure = acme_once(acme, ACME_RENEW_DAYS="100000")
    finally:
        docker("rm", "-f", elsewhere, check=False)
        docker("network", "connect", *[f"--alias={name}" for name in DOMAINS], network, nginx)
    assert failure.returncode != 0
    assert "FAILED to renew the certificate" in failure.stderr
    assert "nginx keeps serving the installed one, expires" in failure.stderr
    status, serial = get(acme, "/healthz")
    assert (status, serial) == (200, before)
