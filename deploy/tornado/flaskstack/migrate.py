"""The one-shot migration: wait for the database, then run the app's MIGRATE_COMMAND.

    python3 -m flaskstack.migrate

An empty MIGRATE_COMMAND runs nothing. Nothing in the compose file depends on the bundled
`postgres` service by name, so the same file serves a database of your own
(deploy/compose/external-db.yml): the migration waits here instead, for whichever database
DATABASE_URL (or the file DATABASE_URL_FILE names) points at. A URL that is not Postgres's
(SQLite) has nothing to wait for. Exit status 1 after DB_WAIT_TIMEOUT seconds (60) without a
connection, with the last error; otherwise the command's own.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from .secrets import expand
from .settings import env_int

# How often a failed attempt is reported while waiting.
REPORT_EVERY_S = 5.0
# Refusals that waiting cannot change: the server answered, and said no.
PERMANENT = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def database_url(environ: Mapping[str, str]) -> str:
    """DATABASE_URL, or the contents of the file DATABASE_URL_FILE names (Swarm's secrets)."""
    url = environ.get("DATABASE_URL", "").strip()
    if not url and environ.get("DATABASE_URL_FILE"):
        with open(environ["DATABASE_URL_FILE"], encoding="utf-8") as f:
            url = f.read().strip()
    return url


def libpq_url(url: str) -> str | None:
    """The libpq form of a SQLAlchemy Postgres URL (driver name dropped); None if not Postgres."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        return None
    return f"postgresql://{rest}"


def where(url: str) -> str:
    """host:port of a URL, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def wait(
    url: str,
    timeout_s: float,
    connect: Callable[[str], Any],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> bool:
    """Try `connect(url)` until it succeeds (True) or `timeout_s` has passed (False)."""
    start = clock()
    reported = start - REPORT_EVERY_S
    while True:
        try:
            connect(url).close()
        except Exception as error:  # any failure means: not yet
            now = clock()
            last = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            if any(reason in last for reason in PERMANENT):
                say(f"migrate: the database at {where(url)} refused the connection: {last}")
                return False
            if now - start >= timeout_s:
                say(f"migrate: no connection to {where(url)} after {timeout_s:.0f} s: {last}")
                return False
            if now - reported >= REPORT_EVERY_S:
                say(
                    f"migrate: waiting for the database at {where(url)} "
                    f"({now - start:.0f} s): {last}"
                )
                reported = now
            sleep(0.5)
        else:
            if clock() - start >= 1:
                say(f"migrate: the database at {where(url)} accepts connections")
            return True


def wait_for_database(environ: Mapping[str, str]) -> bool:
    """Wait for DATABASE_URL's Postgres; True at once for any other database."""
    url = libpq_url(database_url(environ))
    if url is None:
        return True
    import psycopg2

    timeout_s = env_int(environ, "DB_WAIT_TIMEOUT", 60)
    return wait(url, timeout_s, lambda u: psycopg2.connect(u, connect_timeout=3))


def main(environ: MutableMapping[str, str] = os.environ) -> int:
    expand(environ)  # the command (`flask db upgrade`) imports the app, which reads them
    command = environ.get("MIGRATE_COMMAND", "").strip()
    if not command:
        print("migrate: MIGRATE_COMMAND is empty: nothing to run", flush=True)
        return 0
    if not wait_for_database(environ):
        return 1
    print(f"migrate: {command}", flush=True)
    # The command is the operator's own shell line, as `sh -c` in the compose file ran it.
    os.execvp("sh", ["sh", "-c", command])  # noqa: S606, S607
    return 1  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
