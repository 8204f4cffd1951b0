"""HTTPS on nginx (deploy/compose/tls.yml): HTTP/2, wss://, HSTS as HSTS_MAX_AGE says (none by
default, with the local CA) and the redirect from HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import warnings
from urllib.parse import urlsplit

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.support import ROOT, compose, run, wait_healthy

HSTS_MAX_AGE = 31536000  # not the default (0), so the header shows the setting reached nginx


@pytest.fixture(scope="module")
def tls(stack_url):
    """Recreate nginx with TLS on for this module, then put it back as it was."""
    run(str(ROOT / "deploy" / "scripts" / "certs.sh"), "certs", timeout=None)
    env_file = ROOT / os.environ.get("ENV_FILE", ".env")
    tls_port = next(
        (line.split("=", 1)[1].strip() for line in env_file.read_text().splitlines()
         if line.startswith("TLS_PORT=")),
        "8443",
    )  # fmt: skip
    os.environ["TLS_ENABLED"] = "1"
    os.environ["HSTS_MAX_AGE"] = str(HSTS_MAX_AGE)
    try:
        compose("up", "-d", "--no-deps", "nginx")
        wait_healthy(60)
        yield f"https://127.0.0.1:{tls_port}", str(ROOT / "certs" / "ca.crt")
    finally:
        os.environ.pop("TLS_ENABLED")
        os.environ.pop("HSTS_MAX_AGE", None)
        compose("up", "-d", "--no-deps", "nginx")
        wait_healthy(60)


def test_http2_is_negotiated(tls):
    url, ca = tls
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        assert conn.selected_alpn_protocol() == "h2"
        assert conn.version() in ("TLSv1.2", "TLSv1.3")


def test_old_tls_versions_are_refused(tls):
    url, ca = tls
    context = ssl.create_default_context(cafile=ca)
    with (
        warnings.catch_warnings()
    ):  # the client must be able to offer TLS 1.1 for this to mean anything
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        context.wrap_socket(raw, server_hostname=host)
    assert "PROTOCOL_VERSION" in str(refused.value).upper()  # the server's alert, not the client's


def test_https_serves_the_api_with_hsts(tls):
    url, ca = tls
    r = requests.get(f"{url}/api/posts", verify=ca, timeout=10)
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"] == f"max-age={HSTS_MAX_AGE}"
    assert "X-Served-By" in r.headers


def test_plain_http_redirects_to_https(tls, stack_url):
    url, _ = tls
    r = requests.post(f"{stack_url}/api/posts?x=1", json={}, allow_redirects=False, timeout=10)
    assert r.status_code == 308
    assert r.headers["Location"] == f"https://127.0.0.1:{urlsplit(url).port}/api/posts?x=1"
    assert "Strict-Transport-Security" not in r.headers


def test_websocket_over_wss(tls):
    url, ca = tls
    context = ssl.create_default_context(cafile=ca)

    async def scenario() -> tuple[dict, str]:
        request = HTTPRequest(url.replace("https://", "wss://") + "/ws", ssl_options=context)
        ws = await websocket_connect(request)
        try:
            hello = json.loads(await ws.read_message())
            ws.write_message("ping")
            return hello, await asyncio.wait_for(ws.read_message(), 5)
        finally:
            ws.close()
            await asyncio.sleep(0.05)

    hello, pong = asyncio.run(scenario())
    assert hello["type"] == "hello"
    assert pong == "pong"


def test_no_hsts_by_default(tls):
    """Without HSTS_MAX_AGE (the local CA's case) HTTPS answers carry no HSTS header."""
    url, ca = tls
    os.environ.pop("HSTS_MAX_AGE")
    try:
        compose("up", "-d", "--no-deps", "nginx")
        wait_healthy(60)
        r = requests.get(f"{url}/api/posts", verify=ca, timeout=10)
    finally:
        os.environ["HSTS_MAX_AGE"] = str(HSTS_MAX_AGE)
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers
