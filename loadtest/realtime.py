"""The realtime scenario: clients held open while posts are created at a steady rate.

Half the clients use the native /ws, half socket.io (websocket transport), each a new session
through nginx, so they spread over the replicas. Posts are created through the API at
REALTIME_RATE per second for REALTIME_SECONDS; every client should receive every post.created.
It reports delivered ÷ expected, fan-out latency from the post's `created_at` (set in the
transaction, just before its commit) to receipt, and each replica's memory per connection. Then
the json scenario runs with the clients connected but idle, between two runs without them.

Only the stack takes part: the built-in server has no websocket. The clients run in
REALTIME_PROCESSES processes (2 by default) so that their own parsing is not what is measured.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import secrets
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests
from tornado.websocket import websocket_connect

from loadtest.cgroups import Cgroups, compose_containers, inspect_containers
from loadtest.config import SCENARIOS, Config
from loadtest.driver import Driver
from loadtest.results import Results, Target

Receipt = tuple[str, str, int, float]  # client kind, replica, post id, time received


def settings(cfg: Config) -> dict[str, float]:
    smoke = {"clients": 20, "rate": 10, "seconds": 3, "processes": 1}
    full = {"clients": 300, "rate": 50, "seconds": 20, "processes": 2}
    base = smoke if cfg.smoke else full
    return {k: float(os.environ.get(f"REALTIME_{k.upper()}", v)) for k, v in base.items()}


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

    def on_message(message: str | bytes | None) -> None:
        if not isinstance(message, str):
            return
        t = time.time()
        post_id = _post_id(message)
        if post_id is not None:
            receipts.append(("ws", replica[0], post_id, t))
        elif not replica[0] and '"hello"' in message:
            replica[0] = json.loads(message)["replica"]
            hello.append(replica[0])

    conn = await websocket_connect(url + "/ws", on_message_callback=on_message)
    await stop.wait()
    conn.close()


async def _sio_client(
    url: str, token: str, receipts: list[Receipt], hello: list[str], stop: asyncio.Event
):
    """A socket.io client speaking the protocol by hand: a callback per message, no thread."""
    replica = [""]
    conn: Any = None
    unsent: list[str] = []  # replies to messages that came before websocket_connect returned
    refused: list[str] = []

    def send(reply: str) -> None:
        if conn is None:
            unsent.append(reply)
        else:
            conn.write_message(reply)

    def on_message(message: str | bytes | None) -> None:
        if not isinstance(message, str):
            return
        t = time.time()
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

    conn = await websocket_connect(
        url + "/socket.io/?EIO=4&transport=websocket", on_message_callback=on_message
    )
    for reply in unsent:
        conn.write_message(reply)
    await stop.wait()
    conn.close()
    if refused:
        raise RuntimeError(f"socket.io connect refused: {refused[0]}")


def _worker(url: str, token: str, kinds: list[str], out: Any, stop_flag: Any) -> None:
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop_flag.wait)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put(("receipts", receipts, []))

    asyncio.run(main())


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


def run_realtime(cfg: Config, driver: Driver, targets: list[Target], results: Results) -> None:
    """The realtime scenario on the stack; its figures go to results.realtime."""
    stack = next(t for t in targets if t.name == "stack")
    s = settings(cfg)
    clients, rate, seconds = int(s["clients"]), s["rate"], s["seconds"]
    procs = max(1, int(s["processes"]))
    driver.log(
        f"realtime: {clients} clients (half /ws, half socket.io), {rate:g} posts/s for "
        f"{seconds:g} s, then json with the clients idle"
    )
    names, why = compose_containers(cfg.compose_project, "app")
    cgroups = Cgroups.of(names) if names else None
    json_runs: dict[str, list[float]] = {"without": [], "with": []}

    def json_run(label: str, i: int) -> None:
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
    memory_before = cgroups.memory() if cgroups else {}
    workers = [
        ctx.Process(target=_worker, args=(ws_url, token, kinds[i::procs], out, stop_flag))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    placed: Counter[str] = Counter()
    connect_failures: list[str] = []
    try:
        for _ in workers:
            _, where, failed = out.get(timeout=90)
            placed.update(where)
            connect_failures += failed
        time.sleep(2)  # let the replicas settle before reading their memory
        memory_after = cgroups.memory() if cgroups else {}
        t0 = time.monotonic()
        created, post_failures = _post_steadily(session, stack.url, rate, seconds)
        actual_rate = len(created) / max(time.monotonic() - t0, 1e-9)
        time.sleep(3)  # the last events' fan-out
        json_run("with", 1)
    finally:
        stop_flag.set()
        receipts: list[Receipt] = []
        for _ in workers:
            try:
                kind, got, _ = out.get(timeout=60)
            except queue.Empty:
                break
            if kind == "receipts":
                receipts += got
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
    )
    results.realtime["memory_note"] = why
    r = results.realtime
    driver.log(
        f"realtime: {r['connected']}/{clients} connected {dict(placed)}; {r['posts']} posts at "
        f"{r['rate']}/s; delivered {r['delivered']:,}/{r['expected']:,} "
        f"({r['delivered'] / max(1, r['expected']):.2%}); fan-out p50 {r['p50_ms']} ms, "
        f"p99 {r['p99_ms']} ms; json {r['json_rps_with']:,.0f} req/s with the clients, "
        f"{r['json_rps_without']:,.0f} without"
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
) -> dict[str, Any]:
    """The scenario's figures, as results.json keeps them."""
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
    return {
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
                "p50_ms": nearest_rank(latencies[kind], 50),
                "p99_ms": nearest_rank(latencies[kind], 99),
            }
            for kind in ("ws", "socket.io")
        },
        "p50_ms": nearest_rank(everything, 50),
        "p99_ms": nearest_rank(everything, 99),
        "memory": memory,
        "json_rps_without": round(sum(without) / len(without), 1) if without else None,
        "json_rps_with": round(json_runs["with"][0], 1) if json_runs["with"] else None,
        "json_runs": json_runs,
    }
