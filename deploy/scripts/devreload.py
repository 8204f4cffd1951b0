"""Development only: run a command, and run it again whenever a Python file of the source changes.

deploy/compose/dev.yml starts each replica's host through it (and the one-shot migration with
--no-watch: checked, not watched). The check is the point: with APP_ENV=production (the image's
default) it refuses to start anything, so the override cannot ship to production by accident.

    devreload.py [--no-watch] COMMAND...

The source is DEV_SOURCE_DIR (/src unless set; deploy/compose/dev.yml mounts it at /srv/app).
Every 0.5 s it compares the modified times of the .py files there (hidden directories,
__pycache__, build and virtualenvs left out; a few hundred files cost nothing measurable). On
a change it sends the command SIGTERM, so the host drains as on any stop, and starts it again.
SIGTERM and SIGINT to this process go to the command, and this process exits with the command's
status. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL = 0.5  # seconds between two looks at the source
STOP_TIMEOUT = 30  # seconds the command may take to stop, as compose's stop grace period
SKIP = {"__pycache__", "build", "node_modules", "venv"}


def snapshot(root: Path) -> dict[str, int]:
    """The modified time of every .py file under root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    found[path] = os.stat(path).st_mtime_ns
    return found


def changed(before: dict[str, int], now: dict[str, int]) -> list[str]:
    """Files added, removed or modified between two snapshots."""
    return sorted(p for p in before.keys() | now.keys() if before.get(p) != now.get(p))


def log(message: str) -> None:
    print(f"devreload: {message}", file=sys.stderr, flush=True)


def stop(child: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal the command and wait for it; SIGKILL after STOP_TIMEOUT."""
    if child.poll() is None:
        child.send_signal(sig)
    try:
        return child.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def main(argv: list[str]) -> int:
    if os.environ.get("APP_ENV", "production") == "production":
        log(
            "refused: deploy/compose/dev.yml mounts the source and restarts on changes, for "
            "development only, and APP_ENV is production. Set APP_ENV=development (make "
            "dev-stack does) or leave the override out."
        )
        return 2
    watch = True
    if argv[:1] == ["--no-watch"]:
        watch, argv = False, argv[1:]
    if not argv:
        log("usage: devreload.py [--no-watch] COMMAND...")
        return 2
    if not watch:
        os.execvp(argv[0], argv)  # noqa: S606 - the compose file's own command
    root = Path(os.environ.get("DEV_SOURCE_DIR", "/src"))
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _frame: received.append(sig))
    signal.signal(signal.SIGINT, lambda sig, _frame: received.append(sig))
    while True:
        before = snapshot(root)
        child = subprocess.Popen(argv)  # noqa: S603 - the compose file's own command
        exited = None
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                exited = child.wait(timeout=POLL)
            if received:
                return stop(child, received[0])
            now = snapshot(root)
            diff = changed(before, now)
            if diff:
                log(f"{', '.join(diff[:3])}{' …' if len(diff) > 3 else ''} changed: restarting")
                stop(child)
                break
            if exited is not None and exited != 0:
                # A crash or a syntax error: wait for the next change instead of looping.
                log(f"the command exited {exited}; waiting for a change to start it again")
                while not changed(before, snapshot(root)) and not received:
                    time.sleep(POLL)
                if received:
                    return exited
                break
            if exited == 0:
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
