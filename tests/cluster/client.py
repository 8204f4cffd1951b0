"""The cluster test's load client: paced load spread over every node's port on 127.0.0.1.

It stands where an external load balancer, or a client given several addresses by DNS, stands in
front of a real cluster: each request goes to the next node in turn; a node whose port does not
answer (no HTTP response: refused, reset, timed out) is left out for `LEAVE_OUT` seconds, then
tried again. A read that got no response, or a 502/503/504, is sent again at once to another
node; a create is retried by LoadGen with its Idempotency-Key, on the next node. Every attempt
is recorded (its `path` holds the full URL, so the node it went to is known), and every logical
read as the list of its attempts, so a test can count both failed attempts and failed requests.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.faults.loadgen import LoadGen, Outcome

LEAVE_OUT = 10.0  # seconds a node that did not answer is left out
RETRY_STATUSES = frozenset({502, 503, 504})


def port_of(outcome: Outcome) -> int:
    """The node port an attempt went to."""
    return urlsplit(outcome.path).port or 80


class ClusterLoad(LoadGen):
    """LoadGen over several base URLs, with client-side fail-over for reads."""

    def __init__(self, urls: Sequence[str], users: Sequence[dict[str, str]], **kwargs: Any):
        super().__init__("", users, **kwargs)
        self.urls = [u.rstrip("/") for u in urls]
        self.left_out: dict[str, float] = dict.fromkeys(self.urls, 0.0)
        self.reads: list[list[Outcome]] = []
        self._turn = itertools.count()

    def pick(self, avoid: set[str]) -> str:
        """The next node's URL in turn, among those not left out and not in `avoid`."""
        now = time.monotonic()
        with self._lock:
            live = [u for u in self.urls if self.left_out[u] <= now and u not in avoid]
            live = live or [u for u in self.urls if u not in avoid] or self.urls
            return live[next(self._turn) % len(live)]

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
        tried: set[str] = set()
        attempts: list[Outcome] = []
        while True:
            url = self.pick(tried)
            outcome = super()._request(session, kind, method, url + path, key, attempt, **kwargs)
            attempts.append(outcome)
            if outcome.status is None:
                with self._lock:
                    self.left_out[url] = time.monotonic() + LEAVE_OUT
            tried.add(url)
            again = outcome.status is None or outcome.status in RETRY_STATUSES
            if method != "GET" or not again or len(tried) == len(self.urls):
                break
        if method == "GET":
            with self._lock:
                self.reads.append(attempts)
        return outcome

    # -- results ---------------------------------------------------------------------------

    def failed_reads(self) -> list[list[Outcome]]:
        """Logical reads whose every attempt failed."""
        return [r for r in self.reads if not r[-1].ok]

    def failed_creates(self) -> list[Any]:
        """Logical creates never acknowledged with 201."""
        return [c for c in self.creates if not c.acked]

    def error_responses(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        """Attempts answered with a 5xx (an HTTP answer, not a connection failure)."""
        return [
            o
            for o in self.outcomes
            if o.status is not None and o.status >= 500 and since <= o.start <= until
        ]

    def no_answer(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        """Attempts that got no HTTP answer at all."""
        return [o for o in self.outcomes if o.status is None and since <= o.start <= until]

    def per_port(self, since: float = 0.0, until: float = float("inf")) -> dict[int, int]:
        """Answered attempts per node port."""
        return dict(
            sorted(
                Counter(
                    port_of(o) for o in self.outcomes if o.ok and since <= o.start <= until
                ).items()
            )
        )

    def account(self) -> str:
        """Attempts, failed attempts by kind, and failed logical requests."""
        return (
            f"attempts={len(self.outcomes)} no_answer={len(self.no_answer())} "
            f"5xx={len(self.error_responses())} failed_reads={len(self.failed_reads())} "
            f"failed_creates={len(self.failed_creates())}"
        )
