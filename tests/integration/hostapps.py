"""Minimal WSGI apps for the Tornado host tests (loaded through APP_MODULE)."""

import logging
import threading
import time

from flask import Flask, Response, request, stream_with_context

# Two requests must both be inside the app at once to pass; a 3 s timeout breaks it otherwise.
barrier = threading.Barrier(2, timeout=3)
log = logging.getLogger("hostapps")
CHUNKS = 500  # /chunks sends this many numbered lines


def app(environ, start_response):
    """Serve /barrier, /slow, /nap, /boom, /ip, /logged, the streams below and a plain greeting."""
    path = environ["PATH_INFO"]
    if path in STREAMS:
        return STREAMS[path](environ, start_response)
    status, body = "200 OK", b"hello from a minimal WSGI app"
    if path == "/barrier":
        try:
            barrier.wait()
            body = b"met"
        except threading.BrokenBarrierError:
            barrier.reset()
            status, body = "503 Service Unavailable", b"alone"
    elif path == "/slow":
        log.warning("slow request inside the app")  # what a test waits for before it acts
        time.sleep(1.5)
        body = b"slow done"
    elif path == "/nap":
        time.sleep(0.2)
        body = b"napped 200 ms"
    elif path == "/boom":
        raise RuntimeError("secret detail that must not leak")
    elif path == "/ip":
        body = environ["REMOTE_ADDR"].encode()
    elif path == "/logged":
        # No Flask, no request id of its own: the host's id must reach this line.
        log.warning("a line from a plain WSGI app")
    start_response(status, [("Content-Type", "text/plain")])
    return [body]


def events(environ, start_response):
    """An endless Server-Sent Events stream, one event every 10 ms, until the client leaves."""
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),
        ],
    )
    return event_stream(environ.get("QUERY_STRING", ""))


def event_stream(name):
    sent = 0
    try:
        yield b": connected\n\n"
        while True:
            sent += 1
            yield f"id: {sent}\nevent: tick\ndata: {sent}\n\n".encode()
            time.sleep(0.01)  # the app's own pace: a real stream waits for its next event
    finally:
        log.warning("event stream closed", extra={"stream": name, "sent": sent})


def chunks(environ, start_response):
    """CHUNKS numbered lines, each its own chunk, with no Content-Length."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (b"%05d\n" % n for n in range(CHUNKS))


def fail_first(environ, start_response):
    """A body whose iterator raises before its first chunk."""

    def body():
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("secret detail of a failed stream")
        yield b"never"

    return body()


def fail_later(environ, start_response):
    """A body that sends one chunk, then raises."""

    def body():
        yield b"first chunk\n"
        raise RuntimeError("the stream broke after its headers")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return body()


STREAMS = {
    "/events": events,
    "/chunks": chunks,
    "/fail-first": fail_first,
    "/fail-later": fail_later,
}


# --- a Flask app: its ordinary responses and a stream_with_context generator ------------------

flask_app = Flask(__name__)


@flask_app.get("/json")
def flask_json():
    """An ordinary response: Werkzeug's iterable of one chunk, with its Content-Length."""
    return {"hello": "from flask"}


@flask_app.get("/stream")
def flask_stream():
    """Lines made while the response streams, each reading the request (the context kept)."""

    @stream_with_context
    def lines():
        for n in range(int(request.args.get("n", "3"))):
            yield f"{request.path} line {n}\n"

    return Response(lines(), mimetype="text/plain")
