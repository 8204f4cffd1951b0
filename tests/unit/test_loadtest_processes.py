"""The load test's CPU counters for processes outside the containers."""

from __future__ import annotations

import os
import time

from loadtest.processes import ProcessTreeSampler


def burn(seconds: float) -> None:
    """Spend about `seconds` of this process's CPU."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_a_tree_counts_only_the_cpu_spent_after_start() -> None:
    burn(0.6)  # before the window: a long-lived root's past must not count
    sampler = ProcessTreeSampler(os.getpid(), interval=0.05)
    sampler.start()
    burn(0.2)
    sampler.stop()
    # This process's own CPU in the window: the burn, plus a little for the sampling thread.
    assert 0.15 <= sampler.cpu_seconds < 0.5
