"""The app's own cost: a scenario's requests called straight into the WSGI app, in-process.

No HTTP, no host, no nginx: the app is loaded as the host loads it (`APP_MODULE` through
`flaskstack.settings.load_wsgi_app`, secrets from their files), each request becomes a WSGI
environ like the one the host builds from what nginx forwards, and the app is called, its body
read to the end and closed, as the host does. What one call costs in CPU is the floor under
the replicas' CPU per request; the rest is what hosting adds.

loadtest/appcost.py pipes this file into an app replica's container (same image, database and
settings) between the load test's runs:

    docker exec -i <replica> python3 - '{"scenario": "json", "seconds": 2}' < loadtest/appcall.py

It prints one line, MARK and JSON: the calls, their CPU seconds (`time.process_time` around each
call only, so preparing the requests is not counted) and wall seconds, and the statuses. Only
the standard library at import: the loadtest package is not in the app image.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

MARK = "appcall-result "
# loadtest/locustfile.py's paths, scenario by scenario (api is a mix: ApiMix).
PATHS = {
    "plaintext": "/bench/plaintext",
    "json": "/bench/json",
    "db": "/bench/db",
    "queries": "/bench/queries?queries=20",
    "fortunes": "/bench/fortunes",
    "io": "/bench/io?ms=20",
}
# What Locust's FastHttpUser sends and nginx forwards (Host is $http_host).
HOST = "127.0.0.1:8080"
CLIENT_HEADERS = {"User-Agent": "python/gevent-http-client", "Accept-Encoding": "gzip, deflate, br"}

# ApiUser's task weights in loadtest/locustfile.py, its re-login left out (ApiMix).
API_WEIGHTS = {"browse": 10, "read": 6, "create": 2, "upload": 1}

WSGIApp = Callable[..., Iterable[bytes]]
Request = tuple[str, str, dict[str, str], bytes]  # method, path?query, headers, body


def build_environ(
    method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) the host builds for this request as nginx forwards it.

    As flaskstack.wsgi's WSGIExchange.environ: the path unquoted as latin-1, the body whole in
    wsgi.input, Content-Type and Content-Length without the HTTP_ prefix; with the headers
    nginx sets (deploy/nginx/snippets/proxy.conf, a fresh X-Request-ID each time) and the
    client's own.
    """
    from urllib.parse import unquote_to_bytes

    path, _, query = target.partition("?")
    sent = {
        "Host": HOST,
        "X-Real-Ip": "127.0.0.1",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "http",
        "X-Scheme": "http",
        "X-Request-Id": uuid.uuid4().hex,
        **CLIENT_HEADERS,
        **(headers or {}),
    }
    if body:
        sent["Content-Length"] = str(len(body))
    name, _, port = HOST.rpartition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for key, value in sent.items():
        if key == "Content-Type":
            environ["CONTENT_TYPE"] = value
        elif key == "Content-Length":
            environ["CONTENT_LENGTH"] = value
        else:
            environ["HTTP_" + key.replace("-", "_").upper()] = value
    return environ


def call(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, bytes]:
    """Call the app once as the host does: every chunk of the body read, then close()."""
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        seen["status"] = status
        return lambda _data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(seen["status"].split(" ", 1)[0]), body


class Bench:
    """One path, over and over, as a BenchUser requests it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, app: WSGIApp) -> None:
        return None

    def next(self) -> Request:
        return "GET", self.path, {}, b""

    def seen(self, request: Request, status: int, body: bytes) -> None:
        return None


def multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A one-file multipart/form-data body and its Content-Type (the locustfile's uploads too)."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode(),
            f"Content-Type: {content_type}\r\n\r\n".encode(),
            content,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    return body, f"multipart/form-data; boundary={boundary}"


class ApiMix:
    """ApiUser's tasks by their weights: browse 10, read one 6, create 2, upload 1.

    The re-login task is left out: in the load test it signs in at most LOGIN_RATE times a
    second in total whatever the request rate, so its share of a request has no fixed weight
    (and one bcrypt hash outweighs hundreds of the other requests). The account is registered
    and signed in once, in setup, which is not measured.
    """

    PAGE = 20

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.token = ""
        self.total = 0
        self.known: list[int] = []

    def setup(self, app: WSGIApp) -> None:
        """Register an account and sign it in, through the app itself."""
        creds = {"username": f"appcost-{uuid.uuid4().hex[:16]}", "password": uuid.uuid4().hex}
        body = json.dumps(creds).encode()
        json_type = {"Content-Type": "application/json"}
        for path in ("/api/auth/register", "/api/auth/login"):
            status, answer = call(app, build_environ("POST", path, json_type, body))
            if status >= 400:
                raise RuntimeError(f"POST {path} answered {status}: {answer[:200]!r}")
        self.token = json.loads(answer)["access_token"]

    def next(self) -> Request:
        kind = self.rng.choices(list(API_WEIGHTS), weights=list(API_WEIGHTS.values()))[0]
        auth = {"Authorization": f"Bearer {self.token}"}
        if kind == "read" and self.known:
            return "GET", f"/api/posts/{self.rng.choice(self.known)}", {}, b""
        if kind in ("browse", "read"):  # read before any listing: browse first, as ApiUser does
            offset = self.rng.randint(0, max(0, self.total - self.PAGE))
            return "GET", f"/api/posts?limit={self.PAGE}&offset={offset}", {}, b""
        if kind == "create":
            post = {
                "title": f"Load test {uuid.uuid4().hex[:8]}",
                "body": "Written by loadtest/appcall.py. " * 8,  # about the locustfile's size
            }
            headers = {**auth, "Idempotency-Key": str(uuid.uuid4())}
            headers["Content-Type"] = "application/json"
            return "POST", "/api/posts", headers, json.dumps(post).encode()
        content = (f"loadtest {uuid.uuid4().hex}\n" * 64).encode()
        body, content_type = multipart("file", "notes.txt", content, "text/plain")
        return "POST", "/api/uploads", {**auth, "Content-Type": content_type}, body

    def seen(self, request: Request, status: int, body: bytes) -> None:
        """Learn post ids and the total from listings and creates, for later reads."""
        method, target, _, _ = request
        if status >= 300 or not target.startswith("/api/posts"):
            return
        try:
            payload = json.loads(body)
        except ValueError:
            return
        if method == "POST" and isinstance(payload, dict) and isinstance(payload.get("id"), int):
            self.known.append(payload["id"])
        elif method == "GET" and "?" in target:
            items = payload.get("items", []) if isinstance(payload, dict) else payload
            if isinstance(payload, dict) and isinstance(payload.get("total"), int):
                self.total = payload["total"]
            if isinstance(items, list):
                self.known += [p["id"] for p in items if isinstance(p, dict) and "id" in p]
        del self.known[:-2000]


def plan_for(scenario: str) -> Bench | ApiMix:
    """The requests of a scenario of loadtest/locustfile.py; KeyError for any other."""
    if scenario == "api":
        return ApiMix()
    return Bench(PATHS[scenario])


def measure(
    app: WSGIApp,
    plan: Bench | ApiMix,
    warmup: int = 50,
    max_calls: int = 5000,
    seconds: float = 2.0,
    min_calls: int = 20,
) -> dict[str, Any]:
    """Call the app `warmup` times, then until `max_calls` calls or `seconds` of wall time
    (at least `min_calls`); CPU seconds are counted around each call alone."""
    plan.setup(app)
    for _ in range(warmup):
        request = plan.next()
        status, body = call(app, build_environ(*request))
        plan.seen(request, status, body)
    cpu = 0.0
    calls = 0
    statuses: dict[str, int] = {}
    # CPU of this process (all its threads), read around each call alone so that preparing the
    # request is not counted: two clock reads, well under a microsecond each, are the price.
    clock = time.process_time
    start = time.perf_counter()
    while calls < max_calls and (calls < min_calls or time.perf_counter() - start < seconds):
        request = plan.next()
        environ = build_environ(*request)
        t0 = clock()
        status, body = call(app, environ)
        cpu += clock() - t0
        calls += 1
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        plan.seen(request, status, body)
    return {
        "calls": calls,
        "cpu_s": round(cpu, 6),
        "wall_s": round(time.perf_counter() - start, 3),
        "statuses": dict(sorted(statuses.items())),
    }


def main(argv: list[str]) -> int:
    job = json.loads(argv[0]) if argv else {}
    from flaskstack.settings import load_wsgi_app  # the host's own loader, in the app image

    app = load_wsgi_app(os.environ.get("APP_MODULE", "app:create_app()"))
    out = measure(
        app,
        plan_for(job.get("scenario", "json")),
        warmup=int(job.get("warmup", 50)),
        max_calls=int(job.get("max_calls", 5000)),
        seconds=float(job.get("seconds", 2.0)),
    )
    print(MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
