"""End-to-end fixtures: the running test stack, reached only through its published ports."""

from __future__ import annotations

import secrets

import pytest
import requests


def pytest_configure(config: pytest.Config) -> None:
    """Load stack_url, baseline_url and the ResourceWarning hooks, shared with tests/faults."""
    config.pluginmanager.import_plugin("tests.stack_plugin")


@pytest.fixture
def user(stack_url):
    """A fresh user, logged in: (credentials, auth headers)."""
    creds = {"username": f"e2e{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
    r = requests.post(f"{stack_url}/api/auth/register", json=creds, timeout=10)
    assert r.status_code == 201, r.text
    r = requests.post(f"{stack_url}/api/auth/login", json=creds, timeout=10)
    assert r.status_code == 200, r.text
    return creds, {"Authorization": f"Bearer {r.json()['access_token']}"}
