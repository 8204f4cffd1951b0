"""Logging setup for the app on its own (the built-in server, the CLI, tests).

The line itself, JSON or text with the request id on every line, is `contract.log_handler`'s: the
Tornado host installs the same handler, so the app's lines read alike under either.
"""

from __future__ import annotations

import logging

from flaskstack.contract import log_handler


def configure_logging(level: str, fmt: str) -> None:
    """Install this app's stderr handler on the root logger, unless the host process has its own.

    A hosting process (the Tornado server, gunicorn, pytest) that configured logging first keeps
    its handlers; only the level is applied, so no line is written twice.
    """
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, "flaskstack", False)]
    if len(ours) < len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = log_handler(fmt)
    handler.flaskstack = True  # type: ignore[attr-defined]
    root.addHandler(handler)
