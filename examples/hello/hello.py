"""The smallest app the stack can host: any WSGI callable works, Flask or not.

Run it in the stack with APP_MODULE=hello:app (and this directory on PYTHONPATH), or as a Flask
factory the way the demo app is wired: APP_MODULE=yourpackage:create_app(). Its static/ folder
is served by the app itself, or by nginx when APP_STATIC_DIR shares it (README, "Adapting").
"""

import json
import mimetypes
import socket
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def app(environ, start_response):
    """Answer /static/<file> with that file and every other path with a small JSON greeting."""
    path = environ["PATH_INFO"]
    if path.startswith("/static/"):
        return static_file(environ, path.removeprefix("/static/"), start_response)
    return respond(
        start_response,
        "200 OK",
        "application/json",
        json.dumps(
            {
                "hello": "from a minimal WSGI app",
                "path": path,
                "replica": socket.gethostname(),
            }
        ).encode(),
    )


def static_file(environ, name, start_response):
    """Send a file of static/ (revalidated on every use: only nginx gives a long cache)."""
    file = (STATIC / name).resolve()
    if not file.is_relative_to(STATIC) or not file.is_file():
        error = {"status": 404, "code": "not_found", "message": "no such static file"}
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        body = json.dumps({"error": error, "request_id": request_id}).encode()
        return respond(start_response, "404 Not Found", "application/json", body)
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return respond(start_response, "200 OK", content_type, file.read_bytes(), "no-cache")


def respond(start_response, status, content_type, body, cache=None):
    """Start the response; X-Served-By names the replica, as the demo app's responses do."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("X-Served-By", socket.gethostname()),
    ]
    if cache:
        headers.append(("Cache-Control", cache))
    start_response(status, headers)
    return [body]
