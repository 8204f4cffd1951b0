"""The smallest app the stack can host: any WSGI callable works, Flask or not.

The host serves it with APP_MODULE=hello:app from its folder (tests/e2e/test_adapt.py mounts it
beside a replica of the test stack). For a Flask project, see examples/microblog.
"""

import json
import socket


def app(environ, start_response):
    """Answer every path with a small JSON greeting naming the replica."""
    body = json.dumps(
        {
            "hello": "from a minimal WSGI app",
            "path": environ["PATH_INFO"],
            "replica": socket.gethostname(),
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
