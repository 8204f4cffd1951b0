"""The Tornado host (deploy/tornado/server.py) as a real process on a free port, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, free_port

SERVER = ROOT / "deploy" / "tornado" / "server.py"


class Host:
    """One server.py process and its output."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / f"host-{self.port}.log").open("w+")
        full_env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'integration'}",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_FORMAT": "json",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)], env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"host exited early:\n{self.output()}"
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"host did not become healthy:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def host_factory(tmp_path):
    hosts: list[Host] = []

    def start(**env: str) -> Host:
        hosts.append(Host(tmp_path, **env))
        return hosts[-1]

    yield start
    for h in hosts:
        h.stop()
