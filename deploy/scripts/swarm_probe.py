"""Check that nginx answers a health URL and passed the request on to an app replica.

deploy/scripts/swarm.sh (`up`, after the services are up) polls this until it succeeds:

    python3 deploy/scripts/swarm_probe.py http://127.0.0.1:8080/healthz

Exit status 0 when the answer is 200 and carries X-Served-By (the header nginx adds from its
upstream), 1 otherwise; the reason for a 1 goes to stderr, which swarm.sh discards.
"""

from __future__ import annotations

import http.client
import sys
import urllib.error
import urllib.request
from email.message import Message


def served(status: int, headers: Message) -> bool:
    """Whether an answer is a healthy one that went through nginx to an app replica."""
    return status == 200 and bool(headers["X-Served-By"])


def probe(url: str, timeout: float = 3) -> str:
    """Why `url` does not answer healthy through nginx; "" when it does."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            if served(response.status, response.headers):
                return ""
            return f"status {response.status}, X-Served-By {response.headers['X-Served-By']!r}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"status {exc.code}"
    except (OSError, http.client.HTTPException) as exc:
        return str(exc)


def main(argv: list[str]) -> int:
    """Probe argv[1]; exit status 0 when it answers healthy."""
    reason = probe(argv[1])
    if reason:
        print(f"swarm_probe: {argv[1]}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
