"""The smallest app the stack can host: any WSGI callable works, Flask or not.

Run it in the stack with APP_MODULE=hello:app (and this directory on PYTHONPATH), or as a Flask
factory the way the demo app is wired: APP_MODULE=yourpackage:create_app().
"""

import json
import socket


def app(environ, start_response):
    """Answer every path with a small JSON greeting."""
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
