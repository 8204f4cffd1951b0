"""Step load: add users in equal steps, to find where a target breaks (its knee).

Load it next to the scenarios and name the user class, from the repository root (Locust puts
the working directory on sys.path, and this file imports `loadtest.stats`):

    LOADTEST_STEP_USERS=50 LOADTEST_STEP_TIME=8 LOADTEST_STEP_MAX=600 \\
    locust -f loadtest/locustfile.py,loadtest/stepload.py JsonUser --headless \\
        --host http://127.0.0.1:8080

Each step holds its user count for LOADTEST_STEP_TIME seconds. Once a step's p99 passes
500 ms or a request fails, one more step runs (to show the slope) and the test stops; else it
stops after LOADTEST_STEP_MAX users. loadtest/steps.py (SHAPE=step) then computes the knee
exactly from the per-second counts the scenarios record; the check here only ends the test early.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from loadtest.stats import KNEE_P99_MS, percentile


class StepLoadShape(LoadTestShape):
    """STEP_USERS more users every STEP_TIME seconds, up to STEP_MAX users or past the knee."""

    step_users = int(os.environ.get("LOADTEST_STEP_USERS", "50"))
    step_time = float(os.environ.get("LOADTEST_STEP_TIME", "8"))
    step_max = int(os.environ.get("LOADTEST_STEP_MAX", "600"))

    def __init__(self) -> None:
        super().__init__()
        self._step = -1
        self._last_times: dict[int, int] = {}
        self._last_failures = 0
        self._stop_after: int | None = None

    def _past_knee(self) -> bool:
        """Whether the step that just ended crossed the knee (from the runner's live stats).

        With worker processes the master's stats lag by up to one report (3 s): good enough
        to decide when to stop, not to report (the runner does that from exact counts).
        """
        total = self.runner.stats.total
        times = dict(total.response_times)
        delta = {ms: n - self._last_times.get(ms, 0) for ms, n in times.items()}
        failures = total.num_failures - self._last_failures
        self._last_times, self._last_failures = times, total.num_failures
        p99 = percentile({ms: n for ms, n in delta.items() if n > 0}, 0.99)
        return failures > 0 or (p99 is not None and p99 > KNEE_P99_MS)

    def tick(self) -> tuple[int, float] | None:
        steps = -(-self.step_max // self.step_users)  # ceil
        step = int(self.get_run_time() // self.step_time)
        if step != self._step:
            if self._step >= 0 and self._stop_after is None and self._past_knee():
                self._stop_after = self._step + 1
            self._step = step
        if step >= steps or (self._stop_after is not None and step > self._stop_after):
            return None
        users = min(self.step_max, (step + 1) * self.step_users)
        # Spawn each step's users within about a second, so most of the step runs at full load.
        return users, float(max(self.step_users, 1))
