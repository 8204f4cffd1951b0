"""Accounts for the `api` scenario: registered and signed in on a target before its runs.

Registration and login hash with bcrypt on purpose, and nginx limits logins to 10/s per client
address with a burst of 20: so the runner signs the users in up front, below that limit, and
hands Locust their tokens in a file (LOADTEST_API_ACCOUNTS, read by ApiUser.on_start).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from loadtest.config import Config
from loadtest.results import Target


class Accounts:
    """`API_ACCOUNTS` accounts per target, registered once, in a directory removed on exit."""

    def __init__(self, cfg: Config, notes: list[str], log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.notes = notes  # a failed set-up is noted in the report
        self.log = log
        self._dir = tempfile.TemporaryDirectory(prefix="loadtest-accounts-")
        self._env: dict[str, dict[str, str]] = {}

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()

    def env(self, target: Target) -> dict[str, str]:
        """Locust's environment for `api` on the target: its accounts' file ({} if none)."""
        if target.name not in self._env:
            self.log(f"api: registering {self.cfg.api_accounts} users on {target.name}")
            accounts, err = make_accounts(target.url, self.cfg.api_accounts)
            if err:
                self.notes.append(f"api on {target.name}: account set-up failed: {err}")
                print(f"  account set-up on {target.name} failed: {err}", flush=True)
            self._env[target.name] = {}
            if accounts:
                path = Path(self._dir.name) / f"{target.name}.json"
                path.write_text(json.dumps(accounts))
                self._env[target.name] = {"LOADTEST_API_ACCOUNTS": str(path)}
        return self._env[target.name]


def make_accounts(url: str, count: int) -> tuple[list[dict[str, Any]], str]:
    """Register and sign in `count` users (see _make_accounts); never raises."""
    try:
        return _make_accounts(url, count)
    except (requests.RequestException, ValueError, KeyError) as exc:
        return [], f"{type(exc).__name__}: {exc}"


def _make_accounts(url: str, count: int) -> tuple[list[dict[str, Any]], str]:
    """Register `count` throwaway users on the target and sign each in once.

    Logins are paced below nginx's per-address limit (10/s, burst 20) and a 429 waits and
    retries, so the measured runs start with valid tokens and never trip the limiter.
    """
    session = requests.Session()
    accounts = []
    interval = 1 / 5.0
    for _ in range(count):
        username = f"lt-{uuid.uuid4().hex[:16]}"
        password = uuid.uuid4().hex
        body = {"username": username, "password": password}
        r = session.post(f"{url}/api/auth/register", json=body, timeout=30)
        if r.status_code != 201:
            return accounts, f"register answered {r.status_code}: {r.text[:200]}"
        for _attempt in range(10):
            time.sleep(interval)
            r = session.post(f"{url}/api/auth/login", json=body, timeout=30)
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("Retry-After", "1") or 1))
        if r.status_code != 200:
            return accounts, f"login answered {r.status_code}: {r.text[:200]}"
        data = r.json()
        accounts.append(
            {
                "username": username,
                "password": password,
                "access_token": data["access_token"],
                "expires_at": time.time() + float(data.get("expires_in", 900)),
            }
        )
    return accounts, ""
