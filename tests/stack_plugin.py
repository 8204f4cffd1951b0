"""Fixtures and hooks for the tests that reach the running test stack (tests/e2e, tests/faults).

A pytest plugin rather than a conftest: the two folders are siblings, so each conftest loads it
by name (`import_plugin`), and pytest registers it once however many of them a run collects.
"""

from __future__ import annotations

import gc
import os
import warnings

import pytest
import requests


@pytest.fixture(scope="session")
def stack_url() -> str:
    url = os.environ.get("STACK_URL")
    assert url, "STACK_URL is not set: run through `make test-e2e`"
    requests.get(f"{url}/healthz", timeout=5).raise_for_status()
    return url


@pytest.fixture(scope="session")
def baseline_url() -> str:
    url = os.environ.get("BASELINE_URL")
    assert url, "BASELINE_URL is not set: run through `make test-e2e`"
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Ignore ResourceWarning in end-to-end tests only.

    These tests drive real servers through raw sockets, Locust and schemathesis. A client
    socket that one of them leaves to the garbage collector may be collected during a later
    test. With filterwarnings=error, that would fail the later test for a leak it did not make.
    """
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Collect the leaked client sockets while ResourceWarning is still ignored.

    The marker above covers each test, not the garbage collection pytest runs after the
    session, where the ini's filterwarnings=error applies again: a socket freed there became
    an unraisable exception and failed a CI run whose 50 tests had all passed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
