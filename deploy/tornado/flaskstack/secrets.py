"""Secrets from files, into the environment of the app's own process.

Compose and Swarm hand secrets to a container as files under /run/secrets, named in
`<KEY>_FILE`, so `docker inspect` shows no value. An app written for environment variables
(`os.environ["SECRET_KEY"]`) then finds nothing, so the host, the migration and the baseline
read each such file into KEY before they import the app:

    python3 -m flaskstack.secrets COMMAND [ARG ...]

does the same for any other command (a worker of your own), then runs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# Only files Docker mounted as secrets: another setting that ends in _FILE is left alone.
SECRETS_ROOT = "/run/secrets/"


def expand(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set KEY from the file `<KEY>_FILE` names, for each one under /run/secrets whose KEY is
    unset; return the keys set. Trailing newlines are not part of the value."""
    found = []
    for name, path in list(environ.items()):
        key = name.removesuffix("_FILE")
        if key == name or not key or not path.startswith(SECRETS_ROOT) or environ.get(key):
            continue
        with open(path, encoding="utf-8") as secret:
            environ[key] = secret.read().rstrip("\n")
        found.append(key)
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m flaskstack.secrets COMMAND [ARG ...]", file=sys.stderr)
        return 2
    expand()
    os.execvp(argv[0], argv)  # noqa: S606  # the operator's own command
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
