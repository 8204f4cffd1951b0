"""Fault-test fixtures: the test stack under load, broken on purpose and healed between tests.

`make test-e2e` runs these after tests/e2e against the same test stack; `make faults` runs them
alone (tests/faults/run.py).
"""

from __future__ import annotations

import pytest

from . import faultkit as fk


def pytest_configure(config: pytest.Config) -> None:
    """Load stack_url, baseline_url and the ResourceWarning hooks, shared with tests/e2e."""
    config.pluginmanager.import_plugin("tests.stack_plugin")


@pytest.fixture(autouse=True)
def healthy_stack(stack_url):
    """Start from, and leave behind, three healthy replicas and a healthy everything else."""
    fk.heal()
    yield
    fk.wait_healthy()
