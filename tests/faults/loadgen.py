"""A small paced load generator for the fault tests: every outcome recorded, nothing sampled.

Worker threads, each with its own requests.Session (keep-alive to nginx, as a browser or an API
client would), share one schedule: worker i of W takes ticks i, i+W, i+2W, ... of a clock that
ticks `rate` times a second, so the offered load stays near `rate` whatever the latency, and a
worker that fell more than a second behind skips ticks instead of bursting.

Each tick is one of: GET /api/posts, GET /bench/db, or a *logical create*: POST /api/posts with
a fresh Idempotency-Key. A create that fails (an exception, a 5xx, or 409 "in progress") is retried
later with the same key, body and user, until it gets its 201 or `retry_deadline` passes; the
worker serves its normal schedule between retries. Every attempt is an `Outcome`; every logical
create is a `Create` holding its attempts, so a test can ask both "did any request fail?" and
"did every write land exactly once?".
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

GET_POSTS, GET_DB, CREATE = "list", "db", "create"
DEFAULT_MIX = {GET_POSTS: 0.4, GET_DB: 0.4, CREATE: 0.2}
TIMEOUT = (3.05, 30)  # connect, read (nginx's proxy_read_timeout is 30 s)


@dataclass
class Outcome:
    """One HTTP attempt as the client saw it."""

    kind: str
    method: str
    path: str
    request_id: str
    start: float  # wall clock (time.time()), comparable with docker's timestamps
    latency: float  # seconds
    status: int | None  # None: no response (exception)
    error: str | None
    served_by: str | None
    post_id: int | None = None
    key: str | None = None
    attempt: int = 1
    replayed: bool = False
    body: str = ""  # kept only for error responses, to check their format

    @property
    def end(self) -> float:
        return self.start + self.latency

    @property
    def ok(self) -> bool:
        """2xx: what this request was meant to get."""
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        what = f"{self.status}" if self.status is not None else f"exception {self.error}"
        return (
            f"{self.method} {self.path} {what} after {self.latency:.3f}s at {self.start:.3f} "
            f"id={self.request_id} served_by={self.served_by} attempt={self.attempt} "
            f"{self.body[:160]!r}"
        )


@dataclass
class Create:
    """A logical create: one Idempotency-Key, retried until acknowledged with 201."""

    key: str
    title: str
    body: str
    headers: dict[str, str]
    attempts: list[Outcome] = field(default_factory=list)
    next_try: float = 0.0

    @property
    def acked(self) -> Outcome | None:
        return next((o for o in self.attempts if o.status == 201), None)

    @property
    def post_id(self) -> int | None:
        ack = self.acked
        return ack.post_id if ack else None


class LoadGen:
    """Paced mixed load against one base URL; use as a context manager or start()/stop()."""

    def __init__(
        self,
        base_url: str,
        users: Sequence[dict[str, str]],
        rate: float = 100.0,
        workers: int = 32,
        mix: dict[str, float] | None = None,
        duration: float | None = None,
        retry_deadline: float = 60.0,
        timeout: tuple[float, float] = TIMEOUT,
        tag: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.users = list(users)
        self.rate, self.workers = rate, workers
        self.mix = mix or DEFAULT_MIX
        self.duration, self.retry_deadline, self.timeout = duration, retry_deadline, timeout
        self.tag = tag or f"faults-{secrets.token_hex(4)}"
        self.outcomes: list[Outcome] = []
        self.creates: list[Create] = []
        self.skipped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self.started_at = self.stopped_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LoadGen:
        self.started_at = time.time()
        t0 = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, args=(i, t0), name=f"load-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop issuing new work, then finish pending creates (until retry_deadline) and join."""
        self._stop.set()
        self.stopped_at = time.time()
        for thread in self._threads:
            thread.join(timeout=self.retry_deadline + sum(self.timeout) + 5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load workers did not stop: {alive}"

    def wait(self) -> None:
        """Block until `duration` has passed, then stop."""
        assert self.duration is not None
        time.sleep(max(0.0, self.started_at + self.duration - time.time()))
        self.stop()

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()

    # -- the work --------------------------------------------------------------------------

    def _next_create(self) -> Create:
        with self._lock:
            self._seq += 1
            seq = self._seq
        key = f"{self.tag}-{seq}"
        create = Create(
            key=key,
            title=f"{self.tag} post {seq}",
            body=f"written under fault injection, key {key}",
            headers=random.choice(self.users),
        )
        with self._lock:
            self.creates.append(create)
        return create

    def _work(self, index: int, t0: float) -> None:
        rng = random.Random(index)
        kinds, weights = zip(*self.mix.items(), strict=True)
        pending: list[Create] = []
        tick = index
        with requests.Session() as session:
            while True:
                stopping = self._stop.is_set() or (
                    self.duration is not None and time.monotonic() - t0 >= self.duration
                )
                if stopping:
                    # Finish this worker's unacknowledged creates, then leave.
                    deadline = time.monotonic() + self.retry_deadline
                    while pending and time.monotonic() < deadline:
                        due = min(pending, key=lambda c: c.next_try)
                        time.sleep(max(0.0, due.next_try - time.monotonic()))
                        self._attempt_create(session, due, pending)
                    return
                due_at = t0 + tick / self.rate
                now = time.monotonic()
                if now - due_at > 1.0:  # fell behind: skip, do not burst
                    behind = int((now - due_at) * self.rate) // self.workers
                    with self._lock:
                        self.skipped += behind
                    tick += behind * self.workers
                    continue
                time.sleep(max(0.0, due_at - now))
                tick += self.workers
                ready = [c for c in pending if c.next_try <= time.monotonic()]
                if ready:
                    self._attempt_create(session, ready[0], pending)
                    continue
                kind = rng.choices(kinds, weights)[0]
                if kind == CREATE:
                    create = self._next_create()
                    pending.append(create)
                    self._attempt_create(session, create, pending)
                elif kind == GET_POSTS:
                    self._request(session, kind, "GET", "/api/posts?limit=5")
                else:
                    self._request(session, kind, "GET", "/bench/db")

    def _attempt_create(self, session: requests.Session, create: Create, pending: list) -> None:
        outcome = self._request(
            session,
            CREATE,
            "POST",
            "/api/posts",
            json={"title": create.title, "body": create.body},
            headers={**create.headers, "Idempotency-Key": create.key},
            key=create.key,
            attempt=len(create.attempts) + 1,
        )
        create.attempts.append(outcome)
        retryable = outcome.status is None or outcome.status >= 500 or outcome.status == 409
        if outcome.status == 201 or not retryable:
            pending.remove(create)
        else:
            backoff = min(0.2 * 2 ** (len(create.attempts) - 1), 2.0)
            create.next_try = time.monotonic() + backoff

    def _request(
        self,
        session: requests.Session,
        kind: str,
        method: str,
        path: str,
        key: str | None = None,
        attempt: int = 1,
        **kwargs: Any,
    ) -> Outcome:
        with self._lock:
            self._seq += 1
            request_id = f"{self.tag}-r{self._seq}"
        headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
        start, t = time.time(), time.monotonic()
        status = served_by = error = post_id = None
        replayed, body = False, ""
        try:
            r = session.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs
            )
            status, served_by = r.status_code, r.headers.get("X-Served-By")
            replayed = r.headers.get("Idempotent-Replayed") == "true"
            if status == 201:
                post_id = r.json()["id"]
            elif status >= 300:
                body = r.text[:500]
        except (requests.RequestException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        outcome = Outcome(
            kind=kind,
            method=method,
            path=path,
            request_id=request_id,
            start=start,
            latency=time.monotonic() - t,
            status=status,
            error=error,
            served_by=served_by,
            post_id=post_id,
            key=key,
            attempt=attempt,
            replayed=replayed,
            body=body,
        )
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    # -- results ---------------------------------------------------------------------------

    def failures(self, kinds: Iterable[str] | None = None) -> list[Outcome]:
        """Attempts that did not get a 2xx (exceptions included)."""
        wanted = set(kinds) if kinds else None
        return [o for o in self.outcomes if not o.ok and (wanted is None or o.kind in wanted)]

    def in_flight(self, t0: float, t1: float, kinds: Iterable[str] | None = None) -> list[Outcome]:
        """Attempts sent before t1 that had not finished by t0 (wall clock)."""
        wanted = set(kinds) if kinds else None
        return [
            o
            for o in self.outcomes
            if o.start <= t1 and o.end >= t0 and (wanted is None or o.kind in wanted)
        ]

    def summary(self, label: str = "") -> str:
        """One line: requests, achieved rate, status counts, latency percentiles, creates."""
        outs = self.outcomes
        span = max((o.end for o in outs), default=0) - min((o.start for o in outs), default=0)
        statuses = Counter(o.status if o.status is not None else "exc" for o in outs)
        lat = percentiles([o.latency for o in outs if o.ok])
        acked = sum(1 for c in self.creates if c.acked)
        retried = sum(1 for c in self.creates if len(c.attempts) > 1)
        replays = sum(1 for o in outs if o.replayed)
        return (
            f"{label}requests={len(outs)} rate={len(outs) / span if span else 0:.0f}/s "
            f"statuses={dict(sorted(statuses.items(), key=str))} "
            f"p50={lat[50] * 1000:.0f}ms p95={lat[95] * 1000:.0f}ms p99={lat[99] * 1000:.0f}ms "
            f"max={lat[100] * 1000:.0f}ms creates={len(self.creates)} acked={acked} "
            f"retried={retried} replayed={replays} skipped_ticks={self.skipped}"
        )


def percentiles(values: Sequence[float]) -> dict[int, float]:
    """Nearest-rank p50/p95/p99/p100 (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return {50: 0.0, 95: 0.0, 99: 0.0, 100: 0.0}

    def rank(p: int) -> float:
        index = max(0, min(len(ordered) - 1, -(-p * len(ordered) // 100) - 1))
        return ordered[index]

    return {p: rank(p) for p in (50, 95, 99, 100)}


def login_users(base_url: str, count: int) -> list[dict[str, str]]:
    """Register and log in `count` fresh users (paced under nginx's login rate limit)."""
    users = []
    for _ in range(count):
        creds = {"username": f"flt{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
        r = requests.post(f"{base_url}/api/auth/register", json=creds, timeout=30)
        assert r.status_code == 201, r.text
        r = requests.post(f"{base_url}/api/auth/login", json=creds, timeout=30)
        assert r.status_code == 200, r.text
        users.append({"Authorization": f"Bearer {r.json()['access_token']}"})
        time.sleep(0.15)
    return users
