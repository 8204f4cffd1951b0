"""The arithmetic: adding up the window counts of Locust processes, percentiles, medians.

Imported by the Locust processes too (`stepload.py`), so it needs nothing beyond the stdlib.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

KNEE_P99_MS = 500.0  # a step whose p99 passes this, or that fails a request, is the knee

Range = tuple[float, float, float]  # median, min, max


class Tally(TypedDict):
    """Requests counted by one process or added up over several: response times in buckets."""

    requests: int
    failures: int
    times: dict[float, int]  # ms (Locust's rounding) -> requests


def merge_times(tallies: Iterable[Mapping[str, Any]]) -> Tally:
    """Add up per-process tallies ({requests, failures, times: {ms: count}})."""
    out: Tally = {"requests": 0, "failures": 0, "times": {}}
    for t in tallies:
        out["requests"] += t["requests"]
        out["failures"] += t["failures"]
        for ms, n in t["times"].items():
            out["times"][float(ms)] = out["times"].get(float(ms), 0) + n
    return out


def merge_seconds(measured: list[dict[str, Any]]) -> dict[int, Tally]:
    """Add up the per-second tallies of every process, second by second."""
    seconds: dict[int, list[dict[str, Any]]] = {}
    for m in measured:
        for k, tally in m.get("seconds", {}).items():
            seconds.setdefault(int(k), []).append(tally)
    return {k: merge_times(v) for k, v in sorted(seconds.items())}


def percentile(times: Mapping[float, int], q: float) -> float | None:
    """The response time a share q of the requests finished within, by Locust's own rule.

    `locust.stats.calculate_response_time_percentile`: from the slowest bucket down, the first
    one at which no more than int(q * total) requests remain below. Locust's HTML and CSV use
    it, so the report and them agree to the bucket.
    """
    total = sum(times.values())
    if not total:
        return None
    below_allowed = int(total * q)
    seen = 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if total - seen <= below_allowed:
            return ms
    return min(times)


def median_min_max(values: Iterable[float | None]) -> Range | None:
    """Median, min and max of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.median(present), min(present), max(present)
