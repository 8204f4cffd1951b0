"""Prometheus metrics of one replica: GET /metrics, on the IOLoop, internal network only.

One process per container, so prometheus_client's default registry is the whole replica (no
multiprocess mode). It holds:
- what the host counts per request, on the pool thread that ran it (`RequestMetrics`): a
  counter and a latency histogram by Flask's route template, method and status class;
- socket.io connects and events received, by the app's event names (`SOCKETIO_EVENTS`);
- what it reads only when scraped (`HostCollector`): the pool, requests in flight and waiting
  for a thread, the app's SQLAlchemy pools, /ws and socket.io clients, the NOTIFY listener and
  the drain state;
- process_* and python_* from prometheus_client's own collectors;
- whatever the app registers itself (the demo app counts database pool timeouts).

nginx answers /metrics on its public ports with a JSON 404; Prometheus scrapes each replica on
the stack's network (`app:8000`, found by DNS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY as REGISTRY  # the replica's one registry
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

# Seconds. The stack's requests take about 1 ms on the host (json) to tens of ms (db writes);
# the top buckets catch a pool that is queueing and the 30 s of a stuck request.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # no route matched (404, or a request refused before routing)


# socket.io packets from clients, counted on the IOLoop as they arrive (sio.py): connects, and
# events by name. Only the names the app registered handlers for are labels of their own, the
# rest are "other", so clients cannot grow the series.
SOCKETIO_EVENTS = Counter(
    "flaskstack_socketio_events",
    "socket.io connects and events received from clients, by event name (unregistered: other).",
    ["event"],
    registry=REGISTRY,
)

ROUTE_KEY = "flaskstack.route"  # the environ key where a Flask app leaves its request's rule


def route_of(environ: dict[str, Any]) -> str:
    """The Flask rule that served a request ("/api/posts/<id:post_id>"), never the raw path.

    Any other WSGI app, or a request no rule matched, is UNMATCHED, so the label's values stay
    as few as the app's routes.
    """
    return environ.get(ROUTE_KEY, UNMATCHED)


def keep_flask_routes() -> None:
    """Have every Flask app in this process leave each request's rule in its environ.

    Flask drops its request object from the environ when the request ends, before the host
    counts it, so its `request_finished` signal (sent for every response, error pages included)
    copies the rule first.
    """
    try:
        from flask import request, request_finished
    except ImportError:  # not a Flask app: every request is UNMATCHED
        return

    def keep_rule(_app: Any, **_extra: Any) -> None:
        rule = request.url_rule
        request.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED

    request_finished.connect(keep_rule, weak=False)


class RequestMetrics:
    """Per request: one counter and one histogram sample, from any pool thread.

    The labelled children are kept in a dict, so a request costs a dict lookup and two locked
    adds rather than prometheus_client's label validation and lock on every call.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("route", "method", "status")
        self.requests = Counter(
            "flaskstack_http_requests",
            "Requests the app answered, by route template, method and status class.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "flaskstack_http_request_duration_seconds",
            "Time from the request's last byte to the app's response, pool wait included.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, environ: dict[str, Any], status: str, seconds: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        key = (route_of(environ), method if method in METHODS else "other", status[0] + "xx")
        children = self.series.get(key)
        if children is None:  # a race here only makes the same children twice
            children = self.series[key] = (self.requests.labels(*key), self.latency.labels(*key))
        children[0].inc()
        children[1].observe(seconds)


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    """One gauge family with one sample."""
    family = GaugeMetricFamily(name, doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


def sqlalchemy_pools(wsgi_app: Any) -> dict[str, Any]:
    """The app's SQLAlchemy connection pools by bind name ("default"), if it uses
    Flask-SQLAlchemy; read in an app context, as Flask-SQLAlchemy keeps engines per app."""
    ext = getattr(wsgi_app, "extensions", {}).get("sqlalchemy")
    if ext is None or not hasattr(wsgi_app, "app_context"):
        return {}
    with wsgi_app.app_context():
        engines = ext.engines
        return {key or "default": engine.pool for key, engine in engines.items()}


def overflow_limit(pool: Any) -> float:
    """A pool's max_overflow: QueuePool keeps it only as this attribute (-1: no limit)."""
    limit = getattr(pool, "_max_overflow", 0)
    return float("inf") if limit < 0 else limit


class HostCollector:
    """What the host knows of itself, read at scrape time only: nothing here costs a request.

    Each source is a callable, so the collector holds no reference to how the host is built.
    """

    def __init__(
        self,
        threads: int,
        in_flight: Callable[[], int],
        waiting: Callable[[], int],
        pools: Callable[[], dict[str, Any]],
        clients: Callable[[], dict[str, int]],
        listener_up: Callable[[], bool | None],
        draining: Callable[[], bool],
    ) -> None:
        self.threads = threads
        self.in_flight, self.waiting, self.pools = in_flight, waiting, pools
        self.clients, self.listener_up, self.draining = clients, listener_up, draining

    def describe(self) -> list[Metric]:
        return []  # names are checked at collect time; describing would run the callables

    def collect(self) -> Iterator[Metric]:
        yield gauge("flaskstack_pool_threads", "Threads that run the app.", self.threads)
        in_flight, waiting = self.in_flight(), self.waiting()
        yield gauge(
            "flaskstack_requests_in_flight",
            "Requests handed to the pool and not yet answered (running or waiting).",
            in_flight,
        )
        yield gauge(
            "flaskstack_requests_waiting",
            "Requests waiting for a free pool thread.",
            waiting,
        )
        yield from self.pool_metrics()
        for kind, count in self.clients().items():
            yield gauge(
                "flaskstack_realtime_clients",
                "Connected realtime clients (/ws websockets, socket.io sessions).",
                count,
                {"kind": kind},
            )
        up = self.listener_up()
        if up is not None:
            yield gauge(
                "flaskstack_listener_up",
                "1 while the Postgres LISTEN connection that carries events is open.",
                int(up),
            )
        yield gauge(
            "flaskstack_draining", "1 once SIGTERM started the drain.", int(self.draining())
        )

    def pool_metrics(self) -> Iterator[Metric]:
        pools = self.pools()
        if not pools:
            return
        names = {
            "size": "Connections the pool keeps (DB_POOL_SIZE).",
            "checked_out": "Connections in use by a request.",
            "overflow": "Connections opened beyond the pool size (negative: not yet opened).",
            "max": "Connections the pool may hold at most (size + max overflow).",
        }
        families = {
            key: GaugeMetricFamily(f"flaskstack_db_pool_{key}", doc, labels=["bind"])
            for key, doc in names.items()
        }
        for bind, pool in pools.items():
            size = pool.size() if hasattr(pool, "size") else 0
            values = {
                "size": size,
                "checked_out": pool.checkedout() if hasattr(pool, "checkedout") else 0,
                "overflow": pool.overflow() if hasattr(pool, "overflow") else 0,
                "max": size + overflow_limit(pool),
            }
            for key, value in values.items():
                families[key].add_metric([bind], value)
        yield from families.values()


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (text, or OpenMetrics), and its type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
