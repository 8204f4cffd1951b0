"""Locust scenarios for the stack-versus-built-in-server comparison.

One user class per scenario; pick it by name on the command line, e.g.

    locust -f loadtest/locustfile.py JsonUser --host http://127.0.0.1:8080

Every class is a FastHttpUser (several times cheaper per request than HttpUser, so the
generator takes less CPU away from the server it shares two cores with) with no think time:
a closed loop, the load is set by the number of users. `loadtest/driver.py` runs these, from
the repository root (this file imports `loadtest.window`, and Locust puts the working directory
on sys.path).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from collections import deque

from locust import FastHttpUser, constant, events, task

from loadtest.appcall import multipart
from loadtest.window import attach as attach_window

# A request that takes longer than this is a failure, so a stalled server cannot hold a
# fixed-duration run hostage (Locust's own default is 60 s).
NETWORK_TIMEOUT = float(os.environ.get("LOADTEST_TIMEOUT", "10"))


class BenchUser(FastHttpUser):
    """Request one path over and over, as the TechEmpower benchmark clients do."""

    abstract = True
    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT
    path = "/"

    @task
    def hit(self) -> None:
        self.client.get(self.path, name=self.path)


class PlaintextUser(BenchUser):
    path = "/bench/plaintext"


class JsonUser(BenchUser):
    path = "/bench/json"


class DbUser(BenchUser):
    path = "/bench/db"


class QueriesUser(BenchUser):
    path = "/bench/queries?queries=20"


class FortunesUser(BenchUser):
    path = "/bench/fortunes"


class IoUser(BenchUser):
    path = "/bench/io?ms=20"


class CeilingUser(BenchUser):
    """The generator's ceiling: a constant response from nginx itself, no app behind it."""

    path = os.environ.get("LOADTEST_CEILING_PATH", "/nginx/plaintext")


# --- api: a realistic mix --------------------------------------------------------------

_user_numbers = itertools.count()
# Post ids this process has seen (from listings and from its own creates), for "read one".
_known_posts: deque[int] = deque(maxlen=2000)
_next_login = 0.0


def _login_allowed() -> bool:
    """Allow a re-login at most LOADTEST_LOGIN_RATE times a second across all processes.

    nginx rate-limits /api/auth/login per client address, and every simulated user comes
    from 127.0.0.1: the mix logs in far below that limit, so no deliberate 429 is counted.
    """
    global _next_login
    rate = float(os.environ.get("LOADTEST_LOGIN_RATE", "1"))
    if rate <= 0:
        return False
    processes = max(1, int(os.environ.get("LOADTEST_PROCESSES", "1")))
    now = time.monotonic()
    if now < _next_login:
        return False
    _next_login = now + processes / rate
    return True


def _post_ids(payload: object) -> tuple[list[int], int | None]:
    """Ids and total from a post listing, whether it is a bare list or an envelope."""
    total = None
    items = payload
    if isinstance(payload, dict):
        total = payload.get("total") if isinstance(payload.get("total"), int) else None
        for key in ("items", "posts", "data", "results"):
            if isinstance(payload.get(key), list):
                items = payload[key]
                break
    ids = (
        [p["id"] for p in items if isinstance(p, dict) and isinstance(p.get("id"), int)]
        if isinstance(items, list)
        else []
    )
    return ids, total


class ApiUser(FastHttpUser):
    """A signed-in user of the demo API: mostly reading, sometimes writing.

    Each user gets its own account in on_start: from the pool the runner registered and
    signed in beforehand (LOADTEST_API_ACCOUNTS, a JSON file), or else it registers itself
    under a unique name and logs in once. Registration and login hash with bcrypt on purpose,
    and login is rate-limited by nginx, so neither belongs in the steady-state loop; the
    mix re-logs in at a low, fixed rate (see _login_allowed).
    """

    wait_time = constant(0)
    network_timeout = NETWORK_TIMEOUT
    connection_timeout = NETWORK_TIMEOUT
    page_size = 20

    def on_start(self) -> None:
        self.username = self.password = ""
        self.token = ""
        self.total_posts = 0
        accounts_file = os.environ.get("LOADTEST_API_ACCOUNTS")
        if accounts_file:
            with open(accounts_file) as fh:
                accounts = json.load(fh)
            processes = max(1, int(os.environ.get("LOADTEST_PROCESSES", "1")))
            worker = getattr(self.environment.runner, "worker_index", 0) or 0
            account = accounts[(next(_user_numbers) * processes + worker) % len(accounts)]
            self.username, self.password = account["username"], account["password"]
            self.token = account.get("access_token", "")
        else:
            self.username = f"lt-{uuid.uuid4().hex[:16]}"
            self.password = uuid.uuid4().hex
            self.client.post(
                "/api/auth/register",
                json={"username": self.username, "password": self.password},
                name="/api/auth/register",
            )
        if not self.token:
            self.login()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def login(self) -> None:
        with self.client.post(
            "/api/auth/login",
            json={"username": self.username, "password": self.password},
            name="/api/auth/login",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                try:
                    self.token = resp.json()["access_token"]
                except (ValueError, KeyError, TypeError):
                    resp.failure("login answered 200 without an access_token")

    @task(10)
    def browse(self) -> None:
        """List a page of posts at a random offset."""
        offset = random.randint(0, max(0, self.total_posts - self.page_size))
        with self.client.get(
            f"/api/posts?limit={self.page_size}&offset={offset}",
            name="/api/posts?limit=20&offset=[n]",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                try:
                    ids, total = _post_ids(resp.json())
                except ValueError:
                    resp.failure("listing is not JSON")
                    return
                _known_posts.extend(ids)
                if total is not None:
                    self.total_posts = total

    @task(6)
    def read_one(self) -> None:
        """Read one post that a listing or a create returned."""
        if not _known_posts:
            self.browse()
            return
        self.client.get(f"/api/posts/{random.choice(_known_posts)}", name="/api/posts/[id]")

    @task(2)
    def create_post(self) -> None:
        """Create a post, retry-safe thanks to its Idempotency-Key."""
        with self.client.post(
            "/api/posts",
            json={
                "title": f"Load test {uuid.uuid4().hex[:8]}",
                "body": "Written by loadtest/locustfile.py. " * 8,
            },
            headers={**self.auth(), "Idempotency-Key": str(uuid.uuid4())},
            name="/api/posts [create]",
            catch_response=True,
        ) as resp:
            if resp.status_code == 401:
                resp.failure("401: token rejected")
                self.login()
            elif resp.status_code == 201:
                try:
                    post_id = resp.json().get("id")
                except (ValueError, AttributeError):
                    post_id = None
                if isinstance(post_id, int):
                    _known_posts.append(post_id)
            else:
                resp.failure(f"expected 201, got {resp.status_code}")

    @task(1)
    def upload(self) -> None:
        """Upload a small text file as multipart field `file`."""
        content = (f"loadtest {uuid.uuid4().hex}\n" * 64).encode()
        body, content_type = multipart("file", "notes.txt", content, "text/plain")
        with self.client.post(
            "/api/uploads",
            data=body,
            headers={**self.auth(), "Content-Type": content_type},
            name="/api/uploads",
            catch_response=True,
        ) as resp:
            if resp.status_code == 401:
                resp.failure("401: token rejected")
                self.login()
            elif resp.status_code != 201:
                resp.failure(f"expected 201, got {resp.status_code}")

    @task(1)
    def relogin(self) -> None:
        """Sign in again, as a returning user does, at a bounded rate."""
        if _login_allowed():
            self.login()


# --- the measurement window (loadtest/window.py) ----------------------------------------------

attach_window(events)
