"""Faults under load: rollout, SIGTERM, SIGKILL, a Postgres restart, and write integrity.

Every test drives ~100 requests/s of mixed reads and idempotent creates through nginx's published
port (tests/faults/loadgen.py), injects one fault with docker, and checks what the clients saw, what
nginx logged and what is in the database. Each leaves three healthy replicas behind. Figures are
printed as `FIGURE <name>: ...` lines (run pytest with -s to see them); only the functional
claims are asserted, never a timing. Waits are for states (a replica serving again, nginx past
its bench), each with a generous timeout that is the only time bound: how long recovery took
is a FIGURE.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from collections import Counter

import pytest
import requests
from tornado.websocket import websocket_connect

from tests import support
from tests.support import figure

from . import faultkit as fk
from .loadgen import CREATE, GET_DB, GET_POSTS, LoadGen, login_users

RATE = 100.0


@pytest.fixture(scope="module")
def users(stack_url):
    return login_users(stack_url, 4)


def describe(outcomes, limit: int = 10) -> str:
    return "\n".join(o.describe() for o in outcomes[:limit])


def check_integrity(load: LoadGen) -> dict[str, int]:
    """Every acknowledged create is in the database exactly once, under the id it was given."""
    assert load.tag.replace("-", "").isalnum()  # safe to put in SQL as is
    rows = fk.psql(f"SELECT id, title FROM posts WHERE title LIKE '{load.tag} post %'")  # noqa: S608
    per_title = Counter(title for _, title in rows)
    duplicated = {t: n for t, n in per_title.items() if n > 1}
    stored = {title: int(pid) for pid, title in rows}
    acked = [c for c in load.creates if c.acked]
    lost = [c.key for c in acked if stored.get(c.title) != c.post_id]
    # Every 201 for one key, first answer or replay, named the same post.
    split = [c.key for c in acked if len({o.post_id for o in c.attempts if o.status == 201}) != 1]
    unacked = [c.key for c in load.creates if not c.acked]
    assert not duplicated, f"posts stored more than once: {duplicated}"
    assert not lost, f"acknowledged posts missing or with another id: {lost[:10]}"
    assert not split, f"one Idempotency-Key answered with different posts: {split[:10]}"
    assert not unacked, f"creates never acknowledged despite retries: {unacked[:10]}"
    return {
        "creates": len(load.creates),
        "acked": len(acked),
        "stored": len(rows),
        "retried": sum(1 for c in load.creates if len(c.attempts) > 1),
        "replayed": sum(1 for c in load.creates for o in c.attempts if o.replayed),
    }


FAIL_TIMEOUT = float(
    re.search(r"server app:8000 resolve .*fail_timeout=(\d+)s", fk.NGINX_CONF.read_text())[1]
)


def served_by_all(load: LoadGen, hostnames: set[str], since: float = 0.0) -> bool:
    """Whether every replica in `hostnames` has answered a 2xx to a request sent after since."""
    return {o.served_by for o in list(load.outcomes) if o.ok and o.start > since} >= hostnames


def served_counts(load: LoadGen, since: float, hostnames: set[str]) -> dict[str, int]:
    """2xx answers per replica to requests sent after since."""
    counts = Counter(o.served_by for o in list(load.outcomes) if o.ok and o.start > since)
    return {h: counts[h] for h in hostnames}


def nginx_forgot(load: LoadGen, dead: str, since: float) -> bool:
    """Whether nginx went a whole fail_timeout (its bench) past the last request it sent to the
    address `dead` without trying it again: the bench is over, so the peer is gone."""
    access, _ = fk.nginx_log(since)
    sent = {o.request_id: o for o in list(load.outcomes)}
    seen = [
        (sent[e["request_id"]].start, dead in e.get("upstream", ""))
        for e in access
        if e.get("request_id") in sent
    ]
    last = max((t for t, to_dead in seen if to_dead), default=since)
    return any(t > last + FAIL_TIMEOUT + 1 for t, _ in seen)


def docker_kill(container_id: str, signal: str) -> tuple[float, float]:
    t0 = time.time()
    fk.run("docker", "kill", "-s", signal, container_id)
    return t0, time.time()


def test_rollout_under_load_loses_no_request(stack_url, users):
    replaced = fk.replicas()
    before = {r.id for r in replaced}
    with LoadGen(stack_url, users, rate=RATE, tag=f"rollout-{secrets.token_hex(3)}") as load:
        time.sleep(3)
        t0 = time.monotonic()
        result = fk.stack("rollout", check=False, timeout=300)
        took = time.monotonic() - t0
        # Keep the load on until nginx has forgotten the removed replicas (benched after a
        # failed try, or dropped at its next re-resolve): a request sent to a vanished address
        # is the rollout's failure, not the next test's.
        fk.wait_nginx_forgets(stack_url, {f"{r.ip}:8000" for r in replaced}, time.time())
    after = {r.id for r in fk.replicas()}
    integrity = check_integrity(load)
    figure(
        "rollout",
        f"{len(before)} replicas replaced in {took:.0f} s under {RATE:.0f} req/s; "
        f"failed requests={len(load.failures())}; {load.summary()}; integrity={integrity}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not before & after, "some replicas were not replaced"
    assert not load.failures(), describe(load.failures())


def test_sigterm_one_replica_under_load_fails_nothing(stack_url, users):
    victim = fk.replicas()[0]
    with LoadGen(stack_url, users, rate=RATE, tag=f"sigterm-{secrets.token_hex(3)}") as load:
        time.sleep(4)
        t_kill, _ = docker_kill(victim.id, "TERM")
        fk.wait_for(victim.id, "exited", timeout=40)
        state = fk.inspect(victim.id)[0]["State"]
        drained = fk.docker_time(state["FinishedAt"]) - t_kill
        time.sleep(2)
        # `docker kill` counts as a manual stop: Docker's restart policy leaves the container
        # down (moby: ExitOnNext), so bring it back the way an orchestrator would.
        fk.run("docker", "start", victim.id)
        fk.wait_for(victim.id, "healthy", timeout=60)
        t_healthy = time.time()
        # Docker's DNS has the replica back at `docker start`, before it listens: if nginx's
        # 5 s re-resolve adds it then, its first refused connect benches it for fail_timeout
        # (10 s; retried elsewhere, so nothing fails). Wait out both, then stop the load.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            o.served_by == victim.hostname and o.start > t_healthy for o in list(load.outcomes)
        ):
            time.sleep(0.5)
    served_after = {o.served_by for o in load.outcomes if o.start > t_healthy}
    integrity = check_integrity(load)
    figure(
        "sigterm",
        f"replica drained and exited {state['ExitCode']} in {drained:.2f} s after SIGTERM; "
        f"failed requests={len(load.failures())}; {load.summary()}; integrity={integrity}",
    )
    assert state["ExitCode"] == 0
    assert not load.failures(), describe(load.failures())
    assert victim.hostname in served_after, "the restarted replica gets no traffic"


def test_sigkill_one_replica_under_load(stack_url, users):
    victim = fk.replicas()[0]
    dead = f"{victim.ip}:8000"
    with LoadGen(stack_url, users, rate=RATE, tag=f"sigkill-{secrets.token_hex(3)}") as load:
        time.sleep(4)
        t0, t1 = docker_kill(victim.id, "KILL")
        fk.wait_for(victim.id, "exited", timeout=30)  # the kill hit
        # Until nginx has dropped the dead address (its 10 s bench, then the 5 s re-resolve).
        support.wait_for(lambda: nginx_forgot(load, dead, t0), 60, "nginx to forget it", 1)
        t_restart = time.time()
        fk.run("docker", "start", victim.id)
        fk.wait_for(victim.id, "healthy", timeout=60)
        t_healthy = time.time()
        support.wait_for(
            lambda: served_by_all(load, {victim.hostname}, t_healthy), 30, "it to serve again"
        )
    in_flight = load.in_flight(t0, t1)
    in_flight_posts = [o for o in in_flight if o.kind == CREATE]
    failed_idempotent = load.failures([GET_POSTS, GET_DB])
    failed_posts = load.failures([CREATE])
    # What nginx did with the dead address, by the request ids the load generator sent.
    access, errors = fk.nginx_log(t0)
    sent = {o.request_id: o for o in load.outcomes}
    tried_dead = [
        sent[e["request_id"]]
        for e in access
        if e.get("request_id") in sent
        and dead in e.get("upstream", "")
        and t0 <= sent[e["request_id"]].start < t_restart
    ]
    last_choice = max((o.start for o in tried_dead), default=t0) - t0
    slowed = [o for o in load.outcomes if t0 <= o.start < t_restart and o.latency > 0.5]
    dead_errors = [line for line in errors if dead in line and "upstream" in line]
    integrity = check_integrity(load)
    figure(
        "sigkill",
        f"nginx last chose the killed replica {last_choice:.2f} s after SIGKILL "
        f"({len(tried_dead)} requests tried it, {len(slowed)} took >0.5 s, "
        f"{len(dead_errors)} nginx upstream errors); in flight at the kill: {len(in_flight)} "
        f"({len(in_flight_posts)} POST); failed GET={len(failed_idempotent)} "
        f"failed POST attempts={len(failed_posts)} "
        f"(statuses {Counter(o.status for o in failed_posts)}), all retried to 201 with the "
        f"same key; {load.summary()}; integrity={integrity}",
    )
    for line in dead_errors[:5]:
        print("  nginx:", line)
    assert not failed_idempotent, describe(failed_idempotent)
    # The only failed attempts are POSTs that were in flight on the killed replica (nginx may
    # not resend them); check_integrity saw each of them retried to 201 with its key.
    stray = [o for o in failed_posts if not any(o is i for i in in_flight_posts)]
    assert not stray, describe(stray)


class WsWatch:
    """Websocket clients through nginx, at least one per replica, recording post.created events.

    Runs its own asyncio loop in a thread; `events` holds (wall time, replica, title).
    """

    def __init__(self, stack_url: str, replicas: set[str], tries: int = 15) -> None:
        self.url = stack_url.replace("http://", "ws://") + "/ws"
        self.wanted, self.tries = replicas, tries
        self.sockets: dict[str, int] = {}  # replica -> open sockets
        self.events: list[tuple[float, str, str]] = []
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self, timeout: float = 20) -> WsWatch:
        self._thread.start()
        assert self.ready.wait(timeout), f"websockets reached only {set(self.sockets)}"
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def got_since(self, since: float, title: str | None = None) -> set[str]:
        """Replicas whose socket received a post.created after `since` (with this title)."""
        return {r for t, r, ti in self.events if t >= since and (title is None or ti == title)}

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        conns = []
        for _ in range(self.tries):
            ws = await websocket_connect(self.url)
            hello = json.loads(await ws.read_message())
            if hello["replica"] in self.sockets:
                ws.close()
                continue
            self.sockets[hello["replica"]] = 1
            conns.append((hello["replica"], ws))
            if set(self.sockets) >= self.wanted:
                break
        if set(self.sockets) >= self.wanted:
            self.ready.set()
        readers = [asyncio.create_task(self._read(r, ws)) for r, ws in conns]
        await self._stop.wait()
        for _, ws in conns:
            ws.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, replica: str, ws) -> None:
        while (message := await ws.read_message()) is not None:
            event = json.loads(message)
            if event.get("type") == "post.created":
                self.events.append((time.time(), replica, event["post"]["title"]))


class Poller:
    """GET one path at a fixed pace in a thread, recording (start, status, body, served_by)."""

    def __init__(self, url: str, every: float = 0.1) -> None:
        self.url, self.every = url, every
        self.seen: list[tuple[float, int | None, str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(self.every):
                t = time.time()
                try:
                    r = session.get(self.url, timeout=(3.05, 30))
                    self.seen.append((t, r.status_code, r.text[:300], r.headers.get("X-Served-By")))
                except requests.RequestException as exc:
                    self.seen.append((t, None, repr(exc)[:300], None))


def is_503_json(status: int | None, body: str) -> bool:
    try:
        return status == 503 and json.loads(body)["error"]["status"] == 503
    except (ValueError, KeyError, TypeError):
        return False


def create_until_seen(stack_url, headers, ws: WsWatch, since: float, timeout: float = 20) -> float:
    """Create posts (retrying 503) until every watched replica's socket got one; return when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        title = f"ws-after-restart {secrets.token_hex(4)}"
        r = requests.post(
            f"{stack_url}/api/posts",
            json={"title": title, "body": "fan-out"},
            headers=headers,
            timeout=10,
        )
        wait_until = time.monotonic() + 1.5
        while time.monotonic() < wait_until:
            if r.status_code == 201 and ws.got_since(since, title) >= set(ws.sockets):
                return time.time()
            time.sleep(0.05)
    missing = set(ws.sockets) - ws.got_since(since)
    raise AssertionError(f"no post.created reached the sockets on {missing} after the restart")


def test_postgres_restart_under_load(stack_url, users):
    pg = fk.postgres_id()
    before = {r.id: (r.restarts, r.started_at) for r in fk.replicas()}
    hostnames = {r.hostname for r in fk.replicas()}
    ws = WsWatch(stack_url, hostnames).start()
    try:
        with (
            Poller(f"{stack_url}/readyz") as readyz,
            LoadGen(stack_url, users, rate=RATE, tag=f"pgrestart-{secrets.token_hex(3)}") as load,
        ):
            time.sleep(4)
            t_down = time.time()
            # Stop, then start once /readyz has had the chance to notice (at most 20 s): a bare
            # `docker restart` is over in under a second, quicker than a readiness check's own
            # connect timeout, so it can come back before any probe sees it gone.
            fk.run("docker", "stop", "-t", "30", pg)
            deadline = time.time() + 20
            while time.time() < deadline and not any(
                s[0] >= t_down and is_503_json(s[1], s[2]) for s in readyz.seen
            ):
                time.sleep(0.1)
            fk.run("docker", "start", pg)
            t_started = time.time()
            t_healthy = fk.wait_for(pg, "healthy", timeout=60)
            # Until every replica serves normally again, and /readyz says so (the bound here
            # is generous; how long it took is the FIGURE), then a little more traffic each.
            support.wait_for(
                lambda: (
                    served_by_all(load, hostnames, t_healthy)
                    and any(s[0] > t_healthy and s[1] == 200 for s in list(readyz.seen))
                ),
                60,
                "every replica and /readyz to serve again",
                0.1,
            )
            t_back = time.time()
            support.wait_for(
                lambda: min(served_counts(load, t_back, hostnames).values()) >= 20,
                60,
                "20 more requests served by each replica",
                0.1,
            )
        fanout_error = ""
        try:
            create_until_seen(stack_url, users[0], ws, t_healthy)
            fresh = WsWatch(stack_url, set(), tries=1).start()  # a client arriving afterwards
            try:
                create_until_seen(stack_url, users[0], fresh, time.time())
            finally:
                fresh.stop()
        except AssertionError as exc:
            fanout_error = str(exc)
    finally:
        ws.stop()
    after = {r.id: (r.restarts, r.started_at) for r in fk.replicas()}
    if fanout_error:
        # Leave a working stack for the next test: a restarted replica LISTENs again.
        fk.run("docker", "restart", "-t", "30", *[r.id for r in fk.replicas()], timeout=120)
        fk.wait_healthy()
        time.sleep(6)

    # Fan-out under load: the first post.created each replica's socket got after Postgres came
    # back (the load generator keeps creating posts), relative to "healthy".
    resumed = [
        min((t for t, r, _ in ws.events if r == h and t > t_started), default=float("nan"))
        for h in ws.sockets
    ]
    fanout = max(resumed) - t_healthy
    outs = load.outcomes
    bad = [o for o in outs if not o.ok and not is_503_json(o.status, o.body)]
    failed = load.failures()
    # Recovery per replica: the end of the last failure it served, relative to "healthy".
    recovered = {
        h: max((o.end for o in failed if o.served_by == h), default=t_down) - t_healthy
        for h in hostnames
    }
    normal_after = served_counts(load, t_back, hostnames)
    late_failures = [o for o in failed if o.start > t_back]
    ready_503 = [s for s in readyz.seen if t_down <= s[0] <= t_healthy and is_503_json(s[1], s[2])]
    ready_bad = [
        s
        for s in readyz.seen
        if s[1] not in (200, 503) or (s[1] == 503 and not is_503_json(s[1], s[2]))
    ]
    ready_late = [s for s in readyz.seen if s[0] > t_back and s[1] != 200]
    integrity = check_integrity(load)
    figure(
        "postgres-restart",
        f"Postgres down {t_started - t_down:.1f} s (stop, then start), healthy "
        f"{t_healthy - t_down:.1f} s after the stop began; "
        f"{len(failed)} requests answered 503 JSON during the outage, "
        f"{len(bad)} anything else (500/502/504/exception); /readyz 503 x{len(ready_503)}; "
        f"every replica served normally again at most "
        f"{max(recovered.values()):+.2f} s from Postgres healthy "
        f"(per replica {', '.join(f'{v:+.2f}' for v in recovered.values())}; "
        f"{max(recovered.values()) + t_healthy - t_started:+.2f} s from `docker start` "
        f"returning); websocket "
        f"fan-out resumed on all {len(ws.sockets)} replicas {fanout:+.2f} s from healthy "
        f"{fanout_error}; "
        f"{load.summary()}; integrity={integrity}",
    )
    for o in bad:
        print("  not a 503:", o.describe())
    assert after == before, "a replica was restarted or replaced"
    assert not bad, describe(bad)
    assert failed, "the outage was not observed: no 503 at all"
    assert ready_503, "/readyz never answered 503 during the outage"
    assert not ready_bad, ready_bad[:5]
    # Once each replica and /readyz had answered normally again, nothing failed any more.
    assert not late_failures, describe(late_failures)
    assert min(normal_after.values()) >= 20, normal_after
    assert not ready_late, ready_late[:5]
    assert not fanout_error, fanout_error


def test_integrity_through_replica_kill_and_database_restart(stack_url, users):
    """Creates only, from many clients, through a SIGKILL and a Postgres restart."""
    victim = fk.replicas()[0]
    pg = fk.postgres_id()
    tag = f"integrity-{secrets.token_hex(3)}"
    with LoadGen(stack_url, users, rate=60, workers=24, mix={CREATE: 1.0}, tag=tag) as load:
        time.sleep(3)
        docker_kill(victim.id, "KILL")
        fk.wait_for(victim.id, "exited", timeout=30)
        killed = fk.inspect(victim.id)[0]["State"]
        time.sleep(6)
        fk.run("docker", "start", victim.id)
        fk.wait_for(victim.id, "healthy", timeout=60)
        t_back = time.time()
        support.wait_for(lambda: served_by_all(load, {victim.hostname}, t_back), 30, "it to serve")
        pg_started = fk.inspect(pg)[0]["State"]["StartedAt"]
        fk.run("docker", "restart", "-t", "30", pg)
        t_pg = fk.wait_for(pg, "healthy", timeout=60)
        hostnames = {r.hostname for r in fk.replicas()}
        support.wait_for(lambda: served_by_all(load, hostnames, t_pg), 30, "every replica")
    pg_restarted = fk.inspect(pg)[0]["State"]["StartedAt"]
    integrity = check_integrity(load)
    statuses = Counter(o.status if o.status is not None else "exc" for o in load.outcomes)
    figure(
        "integrity",
        f"{integrity['creates']} creates from 24 clients through a SIGKILL and a Postgres "
        f"restart: attempts by status {dict(statuses)}; {integrity['retried']} retried with the "
        f"same Idempotency-Key ({integrity['replayed']} answered by replay); every one of "
        f"{integrity['acked']} acknowledged posts stored exactly once ({integrity['stored']} rows)",
    )
    # The faults happened and reached the clients: a kill that missed, or a restart that was
    # over before any create noticed it, would prove nothing.
    assert (killed["Status"], killed["ExitCode"]) == ("exited", 137), killed
    assert pg_restarted != pg_started, "Postgres was not restarted"
    assert integrity["retried"], "no create was retried: no client met a fault"
