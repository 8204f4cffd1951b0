"""deploy/scripts/devreload.py, the development override's restarter: it refuses production
mode, and restarts its command when a Python file of the source changes (real processes, no
Docker, bounded waits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "scripts" / "devreload.py"
sys.path.insert(0, str(SCRIPT.parent))
import devreload  # noqa: E402


def wait_for(probe, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("app_env", [None, "production"])
def test_refuses_production_mode_and_runs_nothing(tmp_path, app_env):
    env = {k: v for k, v in os.environ.items() if k != "APP_ENV"}
    if app_env:
        env["APP_ENV"] = app_env
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-watch", "touch", str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "refused" in proc.stderr and "APP_ENV is production" in proc.stderr
    assert not marker.exists()


def test_snapshot_sees_python_files_and_skips_hidden_and_cache_directories(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg" / "views.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "views.py").write_text("")
    (tmp_path / ".git" / "hook.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    before = devreload.snapshot(tmp_path)
    assert list(before) == [str(tmp_path / "pkg" / "views.py")]
    os.utime(tmp_path / "pkg" / "views.py", ns=(0, before[str(tmp_path / "pkg" / "views.py")] + 1))
    (tmp_path / "pkg" / "new.py").write_text("")
    assert devreload.changed(before, devreload.snapshot(tmp_path)) == [
        str(tmp_path / "pkg" / "new.py"),
        str(tmp_path / "pkg" / "views.py"),
    ]


def test_restarts_the_command_on_a_change_and_passes_sigterm_on(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "view.py").write_text("A = 1\n")
    starts = tmp_path / "starts"
    child = (
        "import pathlib, signal, sys, time\n"
        f"p = pathlib.Path({str(starts)!r})\n"
        "p.write_text(p.read_text() + 'start\\n' if p.exists() else 'start\\n')\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "APP_ENV": "development", "DEV_SOURCE_DIR": str(source)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), sys.executable, "-c", child],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: starts.exists() and starts.read_text().count("start") == 1)
        (source / "view.py").write_text("A = 2\n")
        os.utime(source / "view.py", ns=(0, time.time_ns() + 10**9))
        wait_for(lambda: starts.read_text().count("start") == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "view.py changed: restarting" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
