"""The measurement window, counted inside each Locust process.

Locust's own --reset-stats is exact in one process but not with --processes: the master
merges worker deltas whose start times predate the reset, which can stretch the measured
interval by up to one worker report (3 s) and understate requests/s. So each process also
counts, itself, the requests that complete inside one fixed window after the warm-up (also by
request name, and, for the step shape, per second of the run), and writes them to
LOADTEST_MEASURE_DIR when it stops; loadtest/driver.py adds the processes up. Locust's CSV
and HTML stay as they are.
`attach` hands a `Window`'s methods to Locust's events: locustfile.py calls it, and so does
measure.py, which the runner loads beside your own locustfile (LOCUSTFILE).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _bucket(ms: float) -> int:
    """Round a response time as Locust does (`locust.stats.bucket_response_time`): 2
    significant digits above 100 ms."""
    if ms < 100:
        return round(ms)
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


class _Tally:
    """Requests, failures and response times (in Locust's buckets) of one process."""

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.times: dict[int, int] = {}

    def add(self, ms: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.failures += 1
        b = _bucket(ms)
        self.times[b] = self.times.get(b, 0) + 1

    def dump(self) -> dict:
        return {"requests": self.requests, "failures": self.failures, "times": self.times}


class Window:
    """This process's counts: the whole run, the window, each second; Locust's events call it."""

    def __init__(self) -> None:
        self.out_dir = os.environ.get("LOADTEST_MEASURE_DIR", "")
        self.warmup = float(os.environ.get("LOADTEST_WARMUP", "0"))
        self.duration = float(os.environ.get("LOADTEST_DURATION", "0"))
        self.per_second = os.environ.get("LOADTEST_PER_SECOND") == "1"
        self.t0 = 0.0
        self.whole = _Tally()
        self.window = _Tally()
        self.names: dict[str, _Tally] = {}  # the window's requests by their Locust name
        self.seconds: dict[int, _Tally] = {}
        self.errors: dict[str, int] = {}
        self.written = False

    def start(self, **_kw: object) -> None:
        self.t0 = time.time()

    def request(
        self,
        response_time: float,
        exception: BaseException | None = None,
        name: str = "",
        **_kw: object,
    ) -> None:
        if not self.t0:
            return
        now = time.time()
        failed = exception is not None
        self.whole.add(response_time, failed)
        if failed:
            key = f"{name}: {type(exception).__name__}: {exception}"[:200]
            self.errors[key] = self.errors.get(key, 0) + 1
        since = now - self.t0
        if self.duration and self.warmup <= since < self.warmup + self.duration:
            self.window.add(response_time, failed)
            self.names.setdefault(name, _Tally()).add(response_time, failed)
        if self.per_second:
            self.seconds.setdefault(int(since), _Tally()).add(response_time, failed)

    def write(self, **_kw: object) -> None:
        if not self.out_dir or self.written or not self.whole.requests:
            return
        self.written = True
        data = {
            "pid": os.getpid(),
            "t0": self.t0,
            "warmup": self.warmup,
            "duration": self.duration,
            "whole": self.whole.dump(),
            "window": self.window.dump(),
            "names": {k: v.dump() for k, v in self.names.items()},
            "seconds": {str(k): v.dump() for k, v in sorted(self.seconds.items())},
            "errors": self.errors,
        }
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"measure-{os.getpid()}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(data, fh)
        os.replace(path + ".tmp", path)


_attached: Window | None = None


def attach(events: Any) -> Window:
    """Count this process's requests in a Window hooked to Locust's `events`, once however
    many locustfiles ask for it."""
    global _attached
    if _attached is None:
        _attached = Window()
        events.test_start.add_listener(_attached.start)
        events.request.add_listener(_attached.request)
        events.test_stop.add_listener(_attached.write)
        events.quitting.add_listener(_attached.write)
    return _attached
