"""Minimal WSGI apps for the Tornado host tests (loaded through APP_MODULE)."""

import threading
import time

# Two requests must both be inside the app at once to pass; a 3 s timeout breaks it otherwise.
barrier = threading.Barrier(2, timeout=3)


def app(environ, start_response):
    """Serve /barrier, /slow, /boom and a plain greeting."""
    path = environ["PATH_INFO"]
    status, body = "200 OK", b"hello from a minimal WSGI app"
    if path == "/barrier":
        try:
            barrier.wait()
            body = b"met"
        except threading.BrokenBarrierError:
            barrier.reset()
            status, body = "503 Service Unavailable", b"alone"
    elif path == "/slow":
        time.sleep(1.5)
        body = b"slow done"
    elif path == "/boom":
        raise RuntimeError("secret detail that must not leak")
    elif path == "/ip":
        body = environ["REMOTE_ADDR"].encode()
    start_response(status, [("Content-Type", "text/plain")])
    return [body]
