"""Flask-SocketIO apps on the host's socket.io server, unchanged.

An app that does `socketio = SocketIO(app)` (or `init_app`) gets a python-socketio *sync*
`socketio.Server` in `socketio.server`, with the app's handlers registered on it, and
Flask-SocketIO's own code (its `emit`, `join_room`, `rooms`, `disconnect`, `Namespace`, the
request context it builds per event) calls that server's methods. The host swaps that object
for `AppServer`, which keeps the app's handlers and answers the same methods by running them on
the replica's AsyncServer (sio.py): so every emit, room change and disconnect goes through
ChannelManager and reaches every replica, and the app needs no message queue.

Threads: the host's AsyncServer lives on the IOLoop; the app's handlers never do. Each event
for the app is one job on the replica's WorkerPool (its APP_THREADS threads, the same ones that
serve HTTP), run by python-socketio's own sync dispatch, and its return value becomes the
acknowledgement. A call the app makes from a thread (a handler, a view, a background task) is
marshalled onto the IOLoop and waited for, so its effects happen in the order the app made
them and its errors reach the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import socketio

log = logging.getLogger("host")
ENVIRON_KEY = "flaskstack.flask_environ"  # where a connection's Flask environ is kept
PATH = "socket.io"  # the one socket.io path the host serves (nginx routes /socket.io/)

# Options an app may give SocketIO(...) that this stack does not take, and why. Each one is
# named at start-up, so nobody finds out at the first event.
IGNORED_OPTIONS = {
    "message_queue": "replicas already share emits, rooms and disconnects through Postgres "
    "NOTIFY; no broker is needed",
    "client_manager": "the stack's Postgres manager is used",
    "async_mode": "handlers run on the host's threads (APP_THREADS), as in threading mode",
    "cors_allowed_origins": "origins are the stack's: CORS_ORIGINS plus the page's own",
    "cors_credentials": "origins are the stack's: CORS_ORIGINS plus the page's own",
    "ping_interval": "the host pings every 20 s (below nginx's proxy_read_timeout)",
    "ping_timeout": "the host pings every 20 s (below nginx's proxy_read_timeout)",
    "max_http_buffer_size": "the host caps client packets at 64 KiB",
    "always_connect": "a connection is accepted only once its connect handler has",
    "async_handlers": "each event runs as its own job on the host's threads",
    "namespaces": "the app's registered namespaces are served",
    "transports": "the host serves polling and websocket",
    "allow_upgrades": "the host serves polling and websocket",
    "http_compression": "nginx compresses",
    "compression_threshold": "nginx compresses",
    "cookie": "sessions are routed by their id, not by a cookie",
    "monitor_clients": "the host's engine.io pings every client",
    "logger": "the host's JSON logging is used",
    "engineio_logger": "the host's JSON logging is used",
    "serializer": "only socket.io's default JSON packets are served",
}
# Options SocketIO passes on to python-socketio that mean nothing different here.
HONOURED_OPTIONS = frozenset({"json"})
# async_mode values whose handlers would expect another concurrency model than threads.
FOREIGN_MODES = frozenset({"eventlet", "gevent", "gevent_uwsgi"})


def find_extension(wsgi_app: Any) -> Any:
    """The app's Flask-SocketIO instance, or None: `app.extensions["socketio"]`, where
    Flask-SocketIO's init_app puts it."""
    extensions = getattr(wsgi_app, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    ext = extensions.get("socketio")
    if ext is None or not isinstance(getattr(ext, "server", None), socketio.Server):
        return None
    return ext


def unsupported_options(ext: Any) -> list[tuple[str, str]]:
    """(option, why) for each SocketIO option the app set that the stack does not use."""
    found = []
    for name, value in sorted(ext.server_options.items()):
        if name in HONOURED_OPTIONS or value is None:
            continue
        if name == "async_mode" and value == "threading":
            continue
        if name == "serializer" and value == "default":
            continue
        why = IGNORED_OPTIONS.get(name, "not used by the stack's socket.io server")
        if name == "async_mode" and value in FOREIGN_MODES:
            why = f"{value} is not used: " + why + "; do not rely on its monkey-patching"
        found.append((name, why))
    middleware = getattr(ext, "sockio_mw", None)
    path = getattr(middleware, "engineio_path", PATH)
    if path and path.strip("/") != PATH:
        found.append(("path", f"/{path.strip('/')}/ is not served: socket.io is at /{PATH}/"))
    return found


def flask_environ(environ: dict[str, Any], flask_app: Any) -> dict[str, Any]:
    """The WSGI environ Flask-SocketIO builds its request contexts from, for one connection.

    engine.io's Tornado driver gives 127.0.0.1 as the client's address and no server name; the
    request it was made from knows both (from nginx's headers, which the host trusts: see
    wsgi.forwarded). It has the cookies and headers of the connection's first request, as under
    Flask-SocketIO's own servers.
    """
    out = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k.isupper()}
    request = getattr(environ.get("tornado.handler"), "request", None)
    host = environ.get("HTTP_HOST", "localhost")
    name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
    scheme = getattr(request, "protocol", None) or environ.get("wsgi.url_scheme", "http")
    out.update(
        {
            "REMOTE_ADDR": getattr(request, "remote_ip", None) or out.get("REMOTE_ADDR", ""),
            "SERVER_NAME": name,
            "SERVER_PORT": port or ("443" if scheme == "https" else "80"),
            "SCRIPT_NAME": "",
            "PATH_INFO": f"/{PATH}/",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": BytesIO(b""),
            "wsgi.errors": environ.get("wsgi.errors"),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "flask.app": flask_app,  # Flask-SocketIO's middleware sets it; its events read it
        }
    )
    return out


class AppServer(socketio.Server):
    """What Flask-SocketIO sees as `socketio.server`: the app's handlers, and the server API
    Flask-SocketIO and apps call, carried out by the host's AsyncServer.

    A `socketio.Server` so that python-socketio's own sync dispatch (`_trigger_event`, event
    and namespace lookup, catch-all handlers, the legacy disconnect signature) runs the app's
    handlers exactly as Flask-SocketIO's threading mode would. Its `__init__` is not called:
    it would build an engine.io server, and this one has none of its own.
    """

    def __init__(
        self,
        ext: Any,
        flask_app: Any,
        sio: socketio.AsyncServer,
        submit: Callable[[Callable[[], None]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        old = ext.server
        self.ext, self.flask_app, self.sio = ext, flask_app, sio
        self.submit, self.loop = submit, loop
        self.loop_thread = threading.get_ident()  # built on the IOLoop
        self.handlers = old.handlers
        self.namespace_handlers = old.namespace_handlers
        for namespace_handler in self.namespace_handlers.values():
            namespace_handler._set_server(self)
        self.not_handled = sio.not_handled
        self.packet_class = old.packet_class
        self.logger = log
        self.async_handlers = True
        self.always_connect = False
        self.namespaces = old.namespaces
        self.async_mode = "threading"  # what the app's code runs under: threads
        self.eio = sio.eio
        self.manager = sio.manager
        self.manager_initialized = True
        self.environ = sio.environ
        self._binary_packet: dict[str, Any] = {}

    # -- the app's side: what is registered, and running it -----------------------------------

    def served_namespaces(self) -> list[str]:
        return sorted(set(self.handlers) | set(self.namespace_handlers))

    def event_names(self) -> set[str]:
        """Every event name the app registered a handler for (a class-based namespace's are
        its on_* methods)."""
        names = {event for events in self.handlers.values() for event in events}
        for handler in self.namespace_handlers.values():
            names |= {n[3:] for n in dir(handler) if n.startswith("on_") and len(n) > 3}
        names.discard("*")
        return names

    def handles(self, event: str, namespace: str) -> bool:
        """Whether the app has a handler for this event in this namespace."""
        handler, _ = self._get_event_handler(event, namespace, ())
        if handler is not None:
            return True
        namespace_handler, _ = self._get_namespace_handler(namespace, ())
        if namespace_handler is None:
            return False
        # Flask-SocketIO's Namespace routes an event to its on_<event> method; a subclass that
        # overrides trigger_event may take any event.
        overridden = type(namespace_handler).trigger_event is not _namespace_trigger()
        return overridden or hasattr(namespace_handler, "on_" + event)

    async def trigger(self, event: str, namespace: str, *args: Any) -> Any:
        """Run the app's handler on a pool thread and return what it returned (on the IOLoop).

        The connect event's environ is swapped for the connection's Flask environ.
        """
        if event == "connect" and len(args) >= 2:
            environ = args[1]
            if ENVIRON_KEY not in environ:
                environ[ENVIRON_KEY] = flask_environ(environ, self.flask_app)
            args = (args[0], environ[ENVIRON_KEY], *args[2:])
        return await self.on_pool(self._trigger_event, event, namespace, *args)

    async def on_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on a pool thread; its result or exception, here on the IOLoop."""
        done: asyncio.Future[Any] = self.loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not done.done():  # the awaiting task may have been cancelled
                (done.set_result if ok else done.set_exception)(value)

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task, which decides
                self.loop.call_soon_threadsafe(settle, False, exc)
            else:
                self.loop.call_soon_threadsafe(settle, True, result)

        self.submit(job)
        return await done

    def attach(self) -> None:
        """Become the app's `socketio.server`."""
        flask_app = self.flask_app
        self.ext.server = self
        self.ext.async_mode = self.async_mode
        middleware = getattr(self.ext, "sockio_mw", None)
        # Flask-SocketIO wraps app.wsgi_app to serve its path with its own engine.io server;
        # here that path never reaches WSGI (the host serves it), so the wrapper goes.
        if middleware is not None and getattr(flask_app, "wsgi_app", None) is middleware:
            flask_app.wsgi_app = middleware.wsgi_app

    # -- the server API, from the app's threads ------------------------------------------------

    def _run(self, coro: Any, wait: bool = True) -> Any:
        """Run a coroutine of the AsyncServer on the IOLoop; from a thread, wait for it (on the
        IOLoop itself, it is only scheduled: waiting there would block what it waits for)."""
        if threading.get_ident() == self.loop_thread:
            task = asyncio.ensure_future(coro)
            task.add_done_callback(_log_failure)
            return None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        if wait:
            return future.result()
        future.add_done_callback(_log_failure)
        return None

    def _callback(self, callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """An ack callback that python-socketio may await on the IOLoop, running the app's
        callback on a pool thread."""
        if callback is None:
            return None

        async def on_ack(*data: Any) -> None:
            try:
                await self.on_pool(callback, *data)
            except Exception:
                log.exception("socket.io acknowledgement callback failed")

        return on_ack

    def emit(
        self,
        event: str,
        data: Any = None,
        to: Any = None,
        room: Any = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        ignore_queue: bool = False,
    ) -> None:
        self._run(
            self.sio.emit(
                event,
                data=data,
                to=to,
                room=room,
                skip_sid=skip_sid,
                namespace=namespace,
                callback=self._callback(callback),
                ignore_queue=ignore_queue,
            )
        )

    def send(
        self,
        data: Any,
        to: Any = None,
        room: Any = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        ignore_queue: bool = False,
    ) -> None:
        self.emit("message", data, to, room, skip_sid, namespace, callback, ignore_queue)

    def call(
        self,
        event: str,
        data: Any = None,
        to: Any = None,
        sid: Any = None,
        namespace: str | None = None,
        timeout: float = 60,
        ignore_queue: bool = False,
    ) -> Any:
        return self._run(
            self.sio.call(
                event,
                data=data,
                to=to,
                sid=sid,
                namespace=namespace,
                timeout=timeout,
                ignore_queue=ignore_queue,
            )
        )

    def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        self._run(self.sio.enter_room(sid, room, namespace=namespace))

    def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        self._run(self.sio.leave_room(sid, room, namespace=namespace))

    def close_room(self, room: Any, namespace: str | None = None) -> None:
        self._run(self.sio.close_room(room, namespace=namespace))

    def rooms(self, sid: str, namespace: str | None = None) -> Any:
        if threading.get_ident() == self.loop_thread:
            return self.sio.rooms(sid, namespace=namespace)
        return self._run(_value(self.sio.rooms, sid, namespace=namespace))

    def get_environ(self, sid: str, namespace: str | None = None) -> Any:
        environ = self.sio.get_environ(sid, namespace=namespace)
        if environ is None:
            return None
        if ENVIRON_KEY not in environ:  # a connection the app's connect handler did not see
            environ[ENVIRON_KEY] = flask_environ(environ, self.flask_app)
        return environ[ENVIRON_KEY]

    def transport(self, sid: str, namespace: str | None = None) -> str:
        return self.sio.transport(sid, namespace=namespace)  # type: ignore[no-any-return]

    def get_session(self, sid: str, namespace: str | None = None) -> Any:
        return self._run(self.sio.get_session(sid, namespace=namespace))

    def save_session(self, sid: str, session: Any, namespace: str | None = None) -> None:
        self._run(self.sio.save_session(sid, session, namespace=namespace))

    @contextlib.contextmanager
    def session(self, sid: str, namespace: str | None = None) -> Iterator[Any]:
        data = self.get_session(sid, namespace=namespace)
        yield data
        self.save_session(sid, data, namespace=namespace)

    def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        # Not waited for: the disconnect runs the app's disconnect handler, which needs a pool
        # thread of its own; with every thread waiting like this one, it would never get one.
        self._run(
            self.sio.disconnect(sid, namespace=namespace, ignore_queue=ignore_queue),
            wait=False,
        )

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A daemon thread, as Flask-SocketIO's threading mode gives."""
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float = 0) -> None:
        time.sleep(seconds)

    def shutdown(self) -> None:
        """Nothing to stop: the host's drain ends every connection."""

    def handle_request(self, environ: Any, start_response: Any) -> Any:  # pragma: no cover
        raise RuntimeError(f"socket.io is served by the host at /{PATH}/, not through WSGI")


async def _value(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A plain call as a coroutine, so state owned by the IOLoop is read on it."""
    return fn(*args, **kwargs)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("socket.io call failed", exc_info=future.exception())


@functools.cache
def _namespace_trigger() -> Any:
    from flask_socketio import Namespace  # only for an app that uses it: not in the host image

    return Namespace.trigger_event


def attach(
    wsgi_app: Any,
    sio: socketio.AsyncServer,
    submit: Callable[[Callable[[], None]], None],
) -> AppServer | None:
    """Serve the app's Flask-SocketIO handlers on `sio`, if it has any; called on the IOLoop."""
    ext = find_extension(wsgi_app)
    if ext is None:
        return None
    for option, why in unsupported_options(ext):
        log.warning(
            "Flask-SocketIO option ignored on this stack", extra={"option": option, "why": why}
        )
    app_server = AppServer(ext, wsgi_app, sio, submit, asyncio.get_running_loop())
    app_server.attach()
    log.info(
        "serving the app's Flask-SocketIO handlers",
        extra={
            "namespaces": app_server.served_namespaces(),
            "events": sorted(app_server.event_names()),
        },
    )
    return app_server
