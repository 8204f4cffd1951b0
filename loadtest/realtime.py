"""The realtime scenario: clients held open while events are sent at a steady rate.

Half the clients use the native /ws, half socket.io (websocket transport), each a new session
through nginx, so they spread over the replicas. Events come at REALTIME_RATE per second for
REALTIME_SECONDS, from one of two sources (REALTIME_SOURCE):

- `posts` (the default): posts created through the API, so each event is a POST, its
  transaction and the NOTIFY it commits;
- `notify`: `pg_notify` on the app's channel straight into the bundled Postgres (one `psql`
  in its container for the whole run), the event shaped as the app's `post.created`: the
  fan-out alone, without the POST path.

Every client should receive every event. The scenario reports, per client kind, delivered ÷
expected, deliveries per second and fan-out latency from the event's time (a post's
`created_at`, set in its transaction just before the commit; a NOTIFY's `clock_timestamp()`) to
receipt; then what each part of the machine spent over the event window, from the containers'
cgroups and the processes' own counters, per delivered message: the replicas, nginx, Postgres,
the clients, the poster, Docker's engine and proxy, other work; the replicas' CPU-quota
throttling (cpu.stat); the clients' event-loop lag; and each replica's memory per connection.
Then the json scenario runs with the clients connected but idle, between two runs without
them (REALTIME_JSON=0 leaves those out).

Only the stack takes part: the built-in server has no websocket. The clients run in
REALTIME_PROCESSES processes (2 by default), each on loadtest/wsclient.py, which parses all the
frames of a TCP read in one call, so that their own parsing is not what is measured.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import secrets
import subprocess
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import psutil
import requests

from loadtest import wsclient
from loadtest.cgroups import Cgroups, Throttling, compose_containers, inspect_containers
from loadtest.config import SCENARIOS, Config
from loadtest.driver import Driver
from loadtest.processes import ProcessTreeSampler
from loadtest.results import Results, Target

Receipt = tuple[str, str, int, float]  # client kind, replica, post id, time received
SOURCES = ("posts", "notify")
CHANNEL = "app_events"  # the host's EVENT_CHANNEL (flaskstack/contract.py)
NOTIFY_IDS = 10**12  # ids of injected events start here, far from any real post's
LAG_TICK = 0.02  # seconds between a client process's event-loop lag probes


def settings(cfg: Config) -> dict[str, float]:
    smoke = {"clients": 20, "rate": 10, "seconds": 3, "processes": 1, "json": 1}
    full = {"clients": 300, "rate": 50, "seconds": 20, "processes": 2, "json": 1}
    base = smoke if cfg.smoke else full
    return {k: float(os.environ.get(f"REALTIME_{k.upper()}", v)) for k, v in base.items()}


def event_source() -> str:
    """REALTIME_SOURCE: where the events come from, `posts` (the API) or `notify` (pg_notify)."""
    source = os.environ.get("REALTIME_SOURCE", "").strip() or "posts"
    if source not in SOURCES:
        raise ValueError(f"REALTIME_SOURCE={source!r}: choose from {', '.join(SOURCES)}")
    return source


def _post_id(message: str) -> int | None:
    """The post id of a post.created message, without parsing the whole JSON (cheap per message:
    the receivers must not be what limits the figure)."""
    if '"post.created"' not in message:
        return None
    at = message.find('"id":')
    if at < 0:
        return None
    digits = message[at + 5 :].lstrip().split(",", 1)[0].split("}", 1)[0]
    return int(digits) if digits.isdigit() else None


async def _ws_client(url: str, receipts: list[Receipt], hello: list[str], stop: asyncio.Event):
    replica = [""]

    def on_message(message: str, t: float) -> None:
        post_id = _post_id(message)
        if post_id is not None:
            receipts.append(("ws", replica[0], post_id, t))
        elif not replica[0] and '"hello"' in message:
            replica[0] = json.loads(message)["replica"]
            hello.append(replica[0])

    conn = await wsclient.connect(url + "/ws", on_message)
    await stop.wait()
    conn.close()


async def _sio_client(
    url: str, token: str, receipts: list[Receipt], hello: list[str], stop: asyncio.Event
):
    """A socket.io client speaking the protocol by hand: a callback per message, no thread."""
    replica = [""]
    conn: Any = None
    unsent: list[str] = []  # replies to messages that came before connect() returned
    refused: list[str] = []

    def send(reply: str) -> None:
        if conn is None:
            unsent.append(reply)
        else:
            conn.send(reply)

    def on_message(message: str, t: float) -> None:
        if message == "2":  # engine.io ping
            send("3")
        elif message.startswith("0{"):  # engine.io open: log in
            send("40" + json.dumps({"token": token}))
        elif message.startswith("42"):
            post_id = _post_id(message)
            if post_id is not None:
                receipts.append(("socket.io", replica[0], post_id, t))
            elif '"hello"' in message:
                replica[0] = json.loads(message[2:])[1]["replica"]
                hello.append(replica[0])
        elif message.startswith("44"):
            refused.append(message)
            stop.set()

    conn = await wsclient.connect(url + "/socket.io/?EIO=4&transport=websocket", on_message)
    for reply in unsent:
        conn.send(reply)
    await stop.wait()
    conn.close()
    if refused:
        raise RuntimeError(f"socket.io connect refused: {refused[0]}")


async def _lag_probe(
    lags: list[float], receipts: list[Receipt], count: Any, stop: asyncio.Event
) -> None:
    """How late the client's event loop runs a timer, in ms: a loop busy with messages runs it
    late, and every receipt time it takes then is late by as much. Also tells the parent how
    many receipts there are so far (`count`, shared memory), so it waits for the last ones."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + LAG_TICK
        await asyncio.sleep(LAG_TICK)
        lags.append((loop.time() - due) * 1000)
        count.value = len(receipts)


def _worker(url: str, token: str, kinds: list[str], out: Any, stop_flag: Any, count: Any) -> None:
    """A client process: connect, report where each landed, hold until told, send receipts."""

    async def main() -> None:
        stop = asyncio.Event()
        receipts: list[Receipt] = []
        hello: list[str] = []
        tasks = []
        for kind in kinds:
            coro = (
                _ws_client(url, receipts, hello, stop)
                if kind == "ws"
                else _sio_client(url, token, receipts, hello, stop)
            )
            tasks.append(asyncio.ensure_future(coro))
            await asyncio.sleep(0.005)  # ~200 connects/s, not one burst
        deadline = time.monotonic() + 60
        while len(hello) < len(kinds) and time.monotonic() < deadline:
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.05)
        failed = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
        out.put(("ready", dict(Counter(hello)), failed))
        lags: list[float] = []
        probe = asyncio.ensure_future(_lag_probe(lags, receipts, count, stop))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop_flag.wait)
        stop.set()
        await asyncio.gather(*tasks, probe, return_exceptions=True)
        out.put(("receipts", receipts, lags))

    asyncio.run(main())


def _wait_for_receipts(counts: list[Any], expected: int, quiet: float = 3.0) -> None:
    """Wait for the last events' fan-out: until the clients hold every receipt, or none has come
    for `quiet` seconds (at least that long, at most a minute)."""
    start = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - start < 60:
        now = sum(c.value for c in counts)
        if now != seen:
            seen, last_change = now, time.monotonic()
        if time.monotonic() - last_change >= quiet or (
            now >= expected and time.monotonic() - start >= quiet
        ):
            return
        time.sleep(0.1)


def _login(url: str) -> tuple[str, requests.Session]:
    creds = {"username": f"rt{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
    session = requests.Session()
    session.post(f"{url}/api/auth/register", json=creds, timeout=10).raise_for_status()
    r = session.post(f"{url}/api/auth/login", json=creds, timeout=10)
    r.raise_for_status()
    token = r.json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    return token, session


def _post_steadily(session: requests.Session, url: str, rate: float, seconds: float):
    """Create posts at `rate` per second; return {post id: created_at} and the failures."""
    created: dict[int, float] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            r = session.post(
                f"{url}/api/posts", json={"title": f"realtime {i}", "body": "fan-out"}, timeout=10
            )
            r.raise_for_status()
            body = r.json()
            stamp = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")).timestamp()
            with lock:
                created[body["id"]] = stamp
        except (requests.RequestException, ValueError, KeyError) as exc:
            with lock:
                failures.append(str(exc)[:120])

    start = time.monotonic()
    # Enough threads to keep the schedule while each POST waits on a busy server.
    with ThreadPoolExecutor(64) as pool:
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    return created, failures


def notify_sql(event_id: int, i: int) -> str:
    """One injected event: its id and time as Postgres sees them, and the NOTIFY itself, shaped
    as the app's `post.created` (app/posts.py) so both client kinds get it as they get a post's.

    psql prints `<id> <epoch seconds>` as the statement ends, when its NOTIFY is delivered."""
    event = {
        "type": "post.created",
        "post": {
            "id": event_id,
            "title": f"realtime {i}",
            "author": {"id": 0, "username": "notify"},
            "created_at": "",
            "url": f"/api/posts/{event_id}",
        },
    }
    payload = json.dumps(event, separators=(",", ":")).replace("'", "''")
    # Every part is ours (an int, a constant, JSON with its quotes doubled), none a user's.
    return (
        f"SELECT {event_id}, extract(epoch FROM clock_timestamp()), "  # noqa: S608
        f"pg_notify('{CHANNEL}', '{payload}');\n"
    )


def _notify_steadily(postgres: str, rate: float, seconds: float):
    """NOTIFY events at `rate` per second through one psql in the Postgres container; return
    {event id: time it was sent} and the failures, as _post_steadily does."""
    created: dict[int, float] = {}
    failures: list[str] = []
    # The official image's psql connects over the container's own socket as POSTGRES_USER.
    shell = 'exec psql -X -q -A -t -F " " -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell on this side
        ["docker", "exec", "-i", postgres, "sh", "-c", shell],  # noqa: S607
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )

    stdin, stdout = proc.stdin, proc.stdout
    if stdin is None or stdout is None:  # never: both are pipes
        raise RuntimeError("psql has no pipes")

    def read() -> None:
        for line in stdout:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                created[int(parts[0])] = float(parts[1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    try:
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stdin.write(notify_sql(NOTIFY_IDS + i, i))
        stdin.close()
        proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        failures.append(f"psql: {exc}"[:120])
        proc.kill()
        proc.wait()
    reader.join(10)
    errors = (proc.stderr.read() if proc.stderr else "").strip()
    if proc.returncode or errors:
        failures.append(f"psql exit {proc.returncode}: {errors[-200:]}")
    return created, failures


class Window:
    """What every part of the machine spent while the events were sent and fanned out.

    Containers from their cgroups (CPU time, and the CPU quota's throttling), the client
    processes and this one (the poster or the psql it drives) from their own counters, Docker's
    engine and proxies and the whole machine's busy time as the load test's runs measure them.
    """

    def __init__(self, cgroups: Cgroups | None, clients: list[int]) -> None:
        self.cgroups = cgroups
        self.clients = [psutil.Process(pid) for pid in clients]
        self.tree = ProcessTreeSampler(os.getpid())
        self.cpu0 = cgroups.cpu_seconds() if cgroups else {}
        self.throttle0 = cgroups.throttling() if cgroups else {}
        self.clients0 = self._client_cpu()
        self.tree.start()
        self.cpu: dict[str, float] = {}
        self.throttling: dict[str, Throttling] = {}
        self.clients_s = 0.0

    def _client_cpu(self) -> float:
        total = 0.0
        for proc in self.clients:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def stop(self) -> Window:
        self.tree.stop()
        self.clients_s = self._client_cpu() - self.clients0
        if self.cgroups:
            cpu1, throttle1 = self.cgroups.cpu_seconds(), self.cgroups.throttling()
            self.cpu = {n: cpu1[n] - self.cpu0[n] for n in cpu1 if n in self.cpu0}
            self.throttling = {
                n: throttle1[n] - self.throttle0[n] for n in throttle1 if n in self.throttle0
            }
        return self

    def figures(
        self, services: dict[str, str], hosts: dict[str, str], source: str
    ) -> dict[str, Any]:
        """CPU seconds per component over the window, and the replicas' throttling."""
        by_service: dict[str, float] = defaultdict(float)
        for name, seconds in self.cpu.items():
            by_service[services.get(name, name)] += seconds
        poster = "poster"
        cpu = {
            "replicas": by_service.pop("app", 0.0),
            "nginx": by_service.pop("nginx", 0.0),
            "postgres": by_service.pop("postgres", 0.0),
            "clients": self.clients_s,
            poster: max(0.0, self.tree.cpu_seconds - self.clients_s),
            "docker engine": self.tree.engine_cpu_seconds,
            "docker-proxy": self.tree.proxy_cpu_seconds,
        }
        for service, seconds in sorted(by_service.items()):
            cpu[f"{service} (container)"] = seconds
        cores = os.cpu_count() or 1
        busy = self.tree.machine_busy * cores * self.tree.wall
        cpu["other work"] = max(0.0, busy - sum(cpu.values())) if self.cgroups else 0.0
        return {
            "window_s": round(self.tree.wall, 2),
            "machine_busy": round(self.tree.machine_busy, 3),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "throttling": {
                hosts.get(name, name): {
                    "periods": t.periods,
                    "throttled": t.throttled,
                    "throttled_s": round(t.seconds, 3),
                }
                for name, t in sorted(self.throttling.items())
                if services.get(name) == "app"
            },
        }


def run_realtime(cfg: Config, driver: Driver, targets: list[Target], results: Results) -> None:
    """The realtime scenario on the stack; its figures go to results.realtime."""
    stack = next(t for t in targets if t.name == "stack")
    s = settings(cfg)
    source = event_source()
    clients, rate, seconds = int(s["clients"]), s["rate"], s["seconds"]
    procs = max(1, int(s["processes"]))
    with_json = bool(s["json"])
    what = "posts through the API" if source == "posts" else "pg_notify events"
    driver.log(
        f"realtime: {clients} clients (half /ws, half socket.io), {rate:g} {what}/s for "
        f"{seconds:g} s" + (", then json with the clients idle" if with_json else "")
    )
    names, why = compose_containers(cfg.compose_project, "app")
    everything, _ = compose_containers(cfg.compose_project)
    found = inspect_containers(everything)
    services = {name: service for name, (_cid, service) in found.items()}
    hosts = {name: cid[:12] for name, (cid, _service) in found.items()}
    cgroups = Cgroups(found) if found else None
    app_cgroups = Cgroups.of(names) if names else None
    postgres = next((n for n, svc in services.items() if svc == "postgres"), "")
    if source == "notify" and not postgres:
        raise RuntimeError(
            f"REALTIME_SOURCE=notify needs the bundled Postgres of {cfg.compose_project!r}"
        )
    json_runs: dict[str, list[float]] = {"without": [], "with": []}

    def json_run(label: str, i: int) -> None:
        if not with_json:
            return
        m = driver.run(
            SCENARIOS["json"],
            stack.url,
            f"realtime-json-{label}-{i}",
            1,
            cfg.users,
            cfg.warmup,
            cfg.duration,
        )
        json_runs[label].append(m.rps)
        driver.log(f"realtime: json {label} connected clients: {m.rps:,.0f} req/s")

    json_run("without", 1)
    token, session = _login(stack.url)
    ws_url = stack.url.replace("http://", "ws://").replace("https://", "wss://")
    kinds = ["ws" if i % 2 == 0 else "sio" for i in range(clients)]
    ctx = mp.get_context("spawn")
    out, stop_flag = ctx.Queue(), ctx.Event()
    counts = [ctx.RawValue("q", 0) for _ in range(procs)]
    memory_before = app_cgroups.memory() if app_cgroups else {}
    workers = [
        ctx.Process(
            target=_worker, args=(ws_url, token, kinds[i::procs], out, stop_flag, counts[i])
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    placed: Counter[str] = Counter()
    connect_failures: list[str] = []
    window: dict[str, Any] = {}
    lags: list[float] = []
    try:
        for _ in workers:
            _, where, failed = out.get(timeout=90)
            placed.update(where)
            connect_failures += failed
        time.sleep(2)  # let the replicas settle before reading their memory
        memory_after = app_cgroups.memory() if app_cgroups else {}
        meter = Window(cgroups, [w.pid for w in workers if w.pid])
        t0 = time.monotonic()
        if source == "notify":
            created, post_failures = _notify_steadily(postgres, rate, seconds)
        else:
            created, post_failures = _post_steadily(session, stack.url, rate, seconds)
        actual_rate = len(created) / max(time.monotonic() - t0, 1e-9)
        _wait_for_receipts(counts, clients * len(created))
        window = meter.stop().figures(services, hosts, source)
        json_run("with", 1)
    finally:
        stop_flag.set()
        receipts: list[Receipt] = []
        for _ in workers:
            try:
                kind, got, lag = out.get(timeout=60)
            except queue.Empty:
                break
            if kind == "receipts":
                receipts += got
                lags += lag
        for w in workers:
            w.join(10)
    json_run("without", 2)

    results.realtime = summarize(
        clients,
        placed,
        connect_failures,
        kinds,
        created,
        post_failures,
        actual_rate,
        receipts,
        replica_memory(names, memory_before, memory_after, placed),
        json_runs,
        source=source,
        seconds=seconds,
        window=window,
        lags=lags,
    )
    results.realtime["memory_note"] = why
    r = results.realtime
    per_kind = "; ".join(
        f"{kind} p50/p95/p99 {k['p50_ms']}/{k['p95_ms']}/{k['p99_ms']} ms"
        for kind, k in r["by_kind"].items()
    )
    driver.log(
        f"realtime: {r['connected']}/{clients} connected {dict(placed)}; {r['posts']} events "
        f"({source}) at {r['rate']}/s; delivered {r['delivered']:,}/{r['expected']:,} "
        f"({r['delivered'] / max(1, r['expected']):.2%}); {per_kind}; "
        f"server CPU per delivered message {r.get('server_us_per_message')} µs; "
        f"largest: {r.get('largest')}"
        + (
            f"; json {r['json_rps_with']:,.0f} req/s with the clients, "
            f"{r['json_rps_without']:,.0f} without"
            if r["json_rps_with"] and r["json_rps_without"]
            else ""
        )
    )


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank, in ms to one decimal; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(q / 100 * len(ordered) + 0.5) - 1))], 1)


def replica_memory(
    names: list[str],
    before: dict[str, float],
    after: dict[str, float],
    placed: Counter[str],
) -> dict[str, dict[str, float | int | None]]:
    """Per replica (by hostname, the container's short id): memory before and after the
    clients connected, and the difference per connection it holds."""
    ids = {name: cid[:12] for name, (cid, _service) in inspect_containers(names).items()}
    out: dict[str, dict[str, float | int | None]] = {}
    for name, host in ids.items():
        held = placed.get(host, 0)
        grew = after.get(name, 0.0) - before.get(name, 0.0)
        out[host] = {
            "connections": held,
            "before_mib": round(before.get(name, 0.0) / 2**20, 1),
            "after_mib": round(after.get(name, 0.0) / 2**20, 1),
            "kib_per_connection": round(grew / 1024 / held, 1) if held else None,
        }
    return out


def summarize(
    clients: int,
    placed: Counter[str],
    connect_failures: list[str],
    kinds: list[str],
    created: dict[int, float],
    post_failures: list[str],
    rate: float,
    receipts: list[Receipt],
    memory: dict[str, dict[str, float | int | None]],
    json_runs: dict[str, list[float]],
    *,
    source: str = "posts",
    seconds: float | None = None,
    window: dict[str, Any] | None = None,
    lags: list[float] | None = None,
) -> dict[str, Any]:
    """The scenario's figures, as results.json keeps them.

    `seconds`: how long events were sent (deliveries per second are over it); `window`:
    Window.figures; `lags`: the clients' event-loop lag probes, ms."""
    label = {"ws": "ws", "sio": "socket.io"}
    per_kind = Counter(label[k] for k in kinds)
    expected = {kind: n * len(created) for kind, n in per_kind.items()}
    delivered: Counter[str] = Counter(kind for kind, _r, pid, _t in receipts if pid in created)
    latencies: dict[str, list[float]] = defaultdict(list)
    for kind, _replica, post_id, t in receipts:
        if post_id in created:
            latencies[kind].append((t - created[post_id]) * 1000)
    everything = [x for xs in latencies.values() for x in xs]
    without = json_runs["without"]
    total = sum(delivered.values())
    window = window or {}
    cpu = window.get("cpu_s", {})
    per_message = {k: round(v * 1e6 / total, 1) for k, v in cpu.items()} if total else {}
    # Other work is the rest of the machine, not a part of the measured path.
    parts = {k: v for k, v in per_message.items() if k != "other work"}
    largest = max(parts, key=parts.__getitem__) if parts else None
    server = ("replicas", "nginx", "postgres")
    lag = lags or []
    return {
        "source": source,
        "seconds": seconds,
        "clients": clients,
        "connected": sum(placed.values()),
        "connect_failures": connect_failures[:5],
        "per_replica": dict(placed),
        "posts": len(created),
        "post_failures": post_failures[:5],
        "rate": round(rate, 1),
        "expected": sum(expected.values()),
        "delivered": sum(delivered.values()),
        "by_kind": {
            kind: {
                "expected": expected.get(kind, 0),
                "delivered": delivered.get(kind, 0),
                "per_s": round(delivered.get(kind, 0) / seconds, 1) if seconds else None,
                "p50_ms": nearest_rank(latencies[kind], 50),
                "p95_ms": nearest_rank(latencies[kind], 95),
                "p99_ms": nearest_rank(latencies[kind], 99),
            }
            for kind in ("ws", "socket.io")
        },
        "p50_ms": nearest_rank(everything, 50),
        "p95_ms": nearest_rank(everything, 95),
        "p99_ms": nearest_rank(everything, 99),
        "window": window,
        # CPU per delivered message, µs: each component's CPU over the window ÷ deliveries.
        "us_per_message": per_message,
        "server_us_per_message": (
            round(sum(per_message.get(k, 0.0) for k in server), 1) if per_message else None
        ),
        "replicas_us_per_message": per_message.get("replicas"),
        "largest": largest,
        "client_lag_ms": {
            "p50": nearest_rank(lag, 50),
            "p99": nearest_rank(lag, 99),
            "max": round(max(lag), 1) if lag else None,
        },
        "memory": memory,
        "json_rps_without": round(sum(without) / len(without), 1) if without else None,
        "json_rps_with": round(json_runs["with"][0], 1) if json_runs["with"] else None,
        "json_runs": json_runs,
    }
