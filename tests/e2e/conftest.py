"""End-to-end fixtures: the running test stack, reached only through its published ports."""

from __future__ import annotations

import gc
import os
import secrets
import subprocess
import warnings
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a compose command against the stack under test (PROJECT / ENV_FILE from make)."""
    return subprocess.run(
        [str(ROOT / "deploy" / "scripts" / "stack.sh"), "compose", *args],
        cwd=ROOT,
        check=check,
        capture_output=True,
        text=True,
    )


FIGURES = ROOT / "build" / "e2e-figures.txt"


def figure(name: str, text: str) -> None:
    """Print a measured figure and keep it in build/e2e-figures.txt (make prints that file)."""
    line = f"FIGURE {name}: {text}"
    print(f"\n{line}", flush=True)
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def container_ids(service: str) -> list[str]:
    return compose("ps", "-q", service).stdout.split()


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


@pytest.fixture
def user(stack_url):
    """A fresh user, logged in: (credentials, auth headers)."""
    creds = {"username": f"e2e{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
    r = requests.post(f"{stack_url}/api/auth/register", json=creds, timeout=10)
    assert r.status_code == 201, r.text
    r = requests.post(f"{stack_url}/api/auth/login", json=creds, timeout=10)
    assert r.status_code == 200, r.text
    return creds, {"Authorization": f"Bearer {r.json()['access_token']}"}


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
