"""Each route's server-side p99 per run of the stack, from the stack's Prometheus (PROMETHEUS_URL).

The replicas time every request themselves, from its arrival at the replica to the app's
response (flaskstack_http_request_duration_seconds, in buckets). After the comparison, one query
per run takes the difference of those counters between two scrapes: the last before the run
started and the first after it ended (PromQL's `@` modifier), so the counts are the requests the
replicas served in between, exactly, not an extrapolation. Nothing here waits between runs,
and nothing here fails a load test: an error becomes a note.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import requests

from loadtest.results import Run

STACK = "stack"  # the target whose replicas Prometheus scrapes
SCRAPE_WAIT_S = 6.0  # one scrape interval (5 s), and a second for the scrape itself
SHORT_RUN_S = 8.0  # a run shorter than this spans one or two scrapes: its figure is approximate
MIN_REQUESTS = 50  # a route with fewer requests in a run has no p99 worth the name
TIMEOUT_S = 5.0  # per query


def delta(series: str, by: str) -> str:
    """`series` summed by `by` at {end} minus the same at {start} (0 for a series that did not
    exist yet then). A replica restarted in between would make it smaller: none does in a run."""
    after = f"sum by ({by}) ({series} @ {{end}})"
    return f"({after} - (sum by ({by}) ({series} @ {{start}}) or {after} * 0))"


P99 = (
    "histogram_quantile(0.99, "
    + delta("flaskstack_http_request_duration_seconds_bucket", "route, le")
    + ")"
)
COUNT = delta("flaskstack_http_requests_total", "route")


class PrometheusError(Exception):
    """Prometheus answered, but not with a result."""


# What asking Prometheus can raise: no answer, an error, or an answer of another shape.
FAILURES = (requests.RequestException, PrometheusError, LookupError, TypeError, ValueError)


def query(url: str, promql: str, at: float) -> dict[str, float]:
    """An instant query at Unix time `at`: its value per route (NaN and ±Inf as Prometheus
    gives them)."""
    resp = requests.get(
        f"{url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}, timeout=TIMEOUT_S
    )
    try:
        body = resp.json()
    except ValueError:
        raise PrometheusError(f"HTTP {resp.status_code}, not JSON") from None
    if resp.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(body.get("error") or f"HTTP {resp.status_code}")
    data = body["data"]
    if data.get("resultType") != "vector":
        raise PrometheusError(f"a {data.get('resultType')} result, not a vector")
    return {item["metric"].get("route", ""): float(item["value"][1]) for item in data["result"]}


def query_times(start: float, end: float) -> tuple[float, float]:
    """The two instants a run's counters are read at: its start (Prometheus takes the last
    scrape before it) and one scrape interval after its end (the first scrape after it)."""
    return start, end + SCRAPE_WAIT_S


def server_latency(
    url: str, start: float, end: float
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per route with at least MIN_REQUESTS requests in the run from `start` to `end` (Unix
    time): its p99 in ms (None when not finite) and its request count."""
    before, at = query_times(start, end)
    counts = query(url, COUNT.format(start=f"{before:.3f}", end=f"{at:.3f}"), at)
    p99s = query(url, P99.format(start=f"{before:.3f}", end=f"{at:.3f}"), at)
    kept = {route: round(n) for route, n in sorted(counts.items()) if n >= MIN_REQUESTS}
    p99_ms: dict[str, float | None] = {}
    for route in kept:
        p99 = p99s.get(route, math.nan)
        p99_ms[route] = round(1000 * p99, 2) if math.isfinite(p99) else None
    return p99_ms, kept


def add_server_latency(
    url: str,
    runs: list[Run],
    notes: list[str],
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Set server_p99_ms and server_requests on every run of the stack; once, after the runs.

    Waits until the last one's range has been scraped; the first error stops the queries and
    becomes a note."""
    if not url:
        return
    spans = [(r, r.wall_start, r.wall_end) for r in runs if r.target == STACK]
    mine = [(r, start, end) for r, start, end in spans if start and end]
    if not mine:
        return
    wait = max(end for _, _, end in mine) + SCRAPE_WAIT_S - time.time()
    if wait > 0:
        log(f"server-side p99: waiting {wait:.1f} s for Prometheus's next scrape")
        sleep(wait)
    for i, (run, start, end) in enumerate(mine):
        try:
            run.server_p99_ms, run.server_requests = server_latency(url, start, end)
        except FAILURES as e:
            said = str(e).strip() or type(e).__name__
            left = len(mine) - i
            notes.append(
                f"Prometheus at {url} gave no server-side figures "
                f"({left} run{'s' if left > 1 else ''} of the stack from {run.prefix} on): "
                f"{said[:300]}"
            )
            return
        if not run.server_requests:
            notes.append(
                f"Prometheus at {url}: no route had {MIN_REQUESTS} requests in {run.prefix} "
                "(is it the stack's Prometheus?)"
            )
    log(f"server-side p99: {len(mine)} runs of the stack queried at {url}")
