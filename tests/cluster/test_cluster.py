"""The stack on a three-node Swarm that loses a node: deploy, drain, kill, roll, rejoin, tear down.

deploy/scripts/cluster.sh starts three Docker engines in containers and a registry on a private
network of their own; deploy/scripts/swarm.sh deploys the stack to them as `make swarm-up` does.
The host's own engine joins no swarm. All traffic from this machine goes to the nodes' ports on
127.0.0.1, through tests/cluster/client.py (it spreads requests over the nodes and leaves out a
node that stops answering). The steps run in order on one cluster (conftest.py skips the rest
after a failure); each prints `FIGURE cluster ...` lines (pytest -s, and build/e2e-figures.txt).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests import support
from tests.cluster.client import ClusterLoad, port_of
from tests.faults.loadgen import login_users
from tests.support import ROOT, free_port, run, stack, wait_for

CLUSTER_SH = str(ROOT / "deploy" / "scripts" / "cluster.sh")
SWARM_SH = str(ROOT / "deploy" / "scripts" / "swarm.sh")
NAME = "flaskstack-ct"  # containers, network, volumes; short: the state dir holds unix sockets
STACK = "flaskstack-ct"
REPLICAS = 3
LOAD = {"rate": 30, "workers": 8, "retry_deadline": 30, "timeout": (2.0, 10.0)}
SETTLE_ENTRIES = 100  # nginx log lines (all nodes) that must avoid a dead replica in a row
STATE: dict[str, Any] = {}  # what one step leaves for the next


def figure(name: str, text: str) -> None:
    support.figure(f"cluster {name}", text)


def free_run(count: int) -> int:
    """A base port B such that B+1 .. B+count are free on 127.0.0.1."""
    for _ in range(50):
        base = free_port() - 1
        ok = True
        for port in range(base + 1, base + count + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise AssertionError(f"no {count} free consecutive ports")


@dataclass
class Cluster:
    env: dict[str, str]
    ports: list[int]
    app_image: str
    timings: dict[str, float] = field(default_factory=dict)
    host: str = ""  # DOCKER_HOST of a manager that answered last

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def script(self, path: str, *args: str, timeout: float = 300) -> float:
        """Run cluster.sh or swarm.sh with the cluster's settings; seconds it took."""
        start = time.monotonic()
        result = run(path, *args, env=self.env, timeout=timeout, check=False)
        print(result.stdout + result.stderr, flush=True)
        assert result.returncode == 0, f"{path} {' '.join(args)} failed (output above)"
        return time.monotonic() - start

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> Any:
        """The docker CLI against a manager of the cluster (another one if the last is gone)."""
        if self.host:
            result = run(
                "docker",
                *args,
                env={**self.env, "DOCKER_HOST": self.host},
                timeout=timeout,
                check=False,
            )
            if result.returncode == 0 or not check:
                return result
        self.host = run(CLUSTER_SH, "manager", env=self.env, timeout=60).stdout.strip()
        return run(
            "docker",
            *args,
            env={**self.env, "DOCKER_HOST": self.host},
            timeout=timeout,
            check=check,
        )

    def nodes(self) -> dict[str, dict[str, str]]:
        """Hostname -> id, status, availability of every node."""
        out = self.docker(
            "node", "ls", "--format", "{{.Hostname}} {{.ID}} {{.Status}} {{.Availability}}"
        ).stdout
        return {
            host: {"id": nid, "status": status, "availability": avail}
            for host, nid, status, avail in (line.split() for line in out.splitlines())
        }

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """Running tasks of a service: node hostname, container host name, addresses."""
        ids = self.docker(
            "service", "ps", "-q", "--filter", "desired-state=running", f"{STACK}_{service}"
        ).stdout.split()
        if not ids:
            return []
        names = {v["id"]: k for k, v in self.nodes().items()}
        found = []
        for task in json.loads(self.docker("inspect", *ids).stdout):
            if task["Status"]["State"] != "running":
                continue
            found.append(
                {
                    "node": names.get(task["NodeID"], task["NodeID"]),
                    "replica": task["Status"]["ContainerStatus"]["ContainerID"][:12],
                    "addresses": [
                        a.split("/")[0]
                        for net in task.get("NetworksAttachments", [])
                        for a in net.get("Addresses", [])
                    ],
                }
            )
        return found

    def replicas(self) -> dict[str, str]:
        """App replica (its X-Served-By) -> the node it runs on."""
        return {t["replica"]: t["node"] for t in self.tasks("app")}

    def kill(self, node: str) -> None:
        run("docker", "kill", f"{NAME}-{node}", timeout=60)

    def nginx_log(self, since: float) -> list[dict[str, Any]]:
        """nginx's access-log entries of every node that answers, since a wall-clock time."""
        out = self.docker(
            "service",
            "logs",
            "--raw",
            "--since",
            f"{int(since) - 1}",
            f"{STACK}_nginx",
            timeout=120,
            check=False,
        ).stdout
        entries = []
        for line in out.splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    tmp = tmp_path_factory.mktemp("cluster")
    base = free_run(3)
    app_image = f"flaskstack/app:clustertest-{secrets.token_hex(3)}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PROJECT", "ENV_FILE", "STACK_URL", "BASELINE_URL", "DOCKER_HOST"}
    }
    env.update(
        CLUSTER_NAME=NAME,
        CLUSTER_PORT=str(base),
        CLUSTER_REGISTRY_PORT=str(free_port()),
        CLUSTER_SUBNET_PREFIX=os.environ.get("CLUSTER_TEST_SUBNET_PREFIX", "10.213.43"),
        ENV_FILE=str(tmp / "cluster.env"),
        SWARM_STACK=STACK,
        SWARM_CLUSTER="1",
        SWARM_TIMEOUT="150",
        SWARM_STATE_DIR=str(ROOT / "build" / "swarm-ct"),
        APP_REPLICAS=str(REPLICAS),
        APP_IMAGE=app_image,
    )
    stack("env", env=env, timeout=60)
    built = os.environ.get("APP_IMAGE", "flaskstack/app:local")
    run("docker", "tag", built, app_image, timeout=60)
    c = Cluster(env=env, ports=[base + i for i in (1, 2, 3)], app_image=app_image)
    try:
        c.script(CLUSTER_SH, "down", timeout=120)  # what an interrupted run left
        c.timings["cluster"] = c.script(CLUSTER_SH, "up", timeout=180)
        c.timings["deploy"] = c.script(SWARM_SH, "up", timeout=300)
        total = c.timings["cluster"] + c.timings["deploy"]
        figure(
            "create+deploy",
            f"cluster.sh up {c.timings['cluster']:.1f} s + swarm.sh up {c.timings['deploy']:.1f} s"
            f" = {total:.1f} s (images present on this machine)",
        )
        yield c
    finally:
        try:
            c.script(CLUSTER_SH, "down", timeout=120)
        finally:
            run("docker", "rmi", app_image, check=False, timeout=60)


def wait(probe, timeout: float, what: str, poll: float = 0.5) -> float:
    """support.wait_for, returning the wall-clock time the probe first held."""
    return wait_for(probe, timeout, what, poll=poll)


def stored_titles(url: str, tag: str, titles: set[str]) -> Counter[str]:
    """How many posts hold each of `titles`, found with the API's search for `tag`."""
    counts: Counter[str] = Counter()
    offset = 0
    while True:
        r = requests.get(
            f"{url}/api/posts",
            params={"q": f"{tag} post ", "limit": 100, "offset": offset},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        page = r.json()["items"]
        counts.update(p["title"] for p in page if p["title"] in titles)
        if len(page) < 100:
            return counts
        offset += 100


def healthy(url: str) -> bool:
    """Whether a node's nginx answers /healthz through its port."""
    try:
        return requests.get(f"{url}/healthz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def served(url: str, n: int) -> list[str]:
    """X-Served-By of n GETs to one node's port."""
    out = []
    for _ in range(n):
        r = requests.get(f"{url}/bench/json", timeout=10)
        assert r.status_code == 200, r.text
        out.append(r.headers["X-Served-By"])
    return out


def test_1_deploy_records_each_replicas_node_and_each_requests_replica(cluster):
    nodes = cluster.nodes()
    assert sorted(nodes) == ["node1", "node2", "node3"]
    assert all(n["status"] == "Ready" for n in nodes.values()), nodes
    replicas = cluster.replicas()
    # Spread: one replica per node (placement preference over the zone labels).
    assert sorted(replicas.values()) == ["node1", "node2", "node3"], replicas
    assert sorted(t["node"] for t in cluster.tasks("nginx")) == ["node1", "node2", "node3"]
    (pg,) = cluster.tasks("postgres")
    label = cluster.docker(
        "node", "inspect", "-f", '{{index .Spec.Labels "flaskstack.postgres"}}', pg["node"]
    ).stdout
    assert label.strip() == "true"
    STATE["pg_node"] = pg["node"]

    # Secrets are Swarm secrets: no value in the services' or the containers' environment.
    values = [
        stack("get", key, env=cluster.env, timeout=30).stdout.strip()
        for key in ("SECRET_KEY", "JWT_SECRET_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD")
    ]
    assert all(values)
    specs = cluster.docker("service", "inspect", f"{STACK}_app", f"{STACK}_postgres").stdout
    assert not [v for v in values if v in specs]
    app_env = json.loads(specs)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "SECRET_KEY_FILE=/run/secrets/secret_key" in app_env
    assert not [e for e in app_env if e.startswith(("SECRET_KEY=", "DATABASE_URL="))]

    # Every node's nginx reaches every replica, whichever node it runs on.
    deadline = time.monotonic() + 20
    seen: dict[int, set[str]] = {p: set() for p in cluster.ports}
    while time.monotonic() < deadline and any(s != set(replicas) for s in seen.values()):
        for port, url in zip(cluster.ports, cluster.urls, strict=True):
            seen[port] |= set(served(url, 6))
    assert all(s == set(replicas) for s in seen.values()), (seen, replicas)

    # Uploads work whichever node a request lands on: written through node 1, read through all.
    users = login_users(cluster.urls[0], 4)
    STATE["users"] = users
    blob = secrets.token_bytes(50_000)
    r = requests.post(
        f"{cluster.urls[0]}/api/uploads",
        headers=users[0],
        files={"file": ("c.bin", blob)},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    for url in cluster.urls:
        got = requests.get(f"{url}{r.json()['url']}", timeout=30)
        assert got.status_code == 200 and hashlib.sha256(got.content).digest() == (
            hashlib.sha256(blob).digest()
        ), url

    # Under load: each request's replica, and so its node, is recorded.
    load = ClusterLoad(cluster.urls, users, tag="ct1", **LOAD)
    with load:
        time.sleep(8)
    assert not load.failures(), [o.describe() for o in load.failures()[:10]]
    by_node = Counter(replicas.get(o.served_by, "?") for o in load.outcomes)
    assert set(by_node) == {"node1", "node2", "node3"}, by_node
    figure(
        "replicas",
        ", ".join(f"{r} on {n}" for r, n in sorted(replicas.items()))
        + f"; postgres on {pg['node']}",
    )
    figure(
        "spread",
        f"{len(load.outcomes)} requests by replica node {dict(sorted(by_node.items()))}"
        f", by entry port {load.per_port()}",
    )
    figure("steady load", load.summary())
    stats = run(CLUSTER_SH, "stats", env=cluster.env, timeout=60).stdout
    figure("memory", " | ".join(" ".join(line.split()[:4]) for line in stats.splitlines()[1:]))


def test_2_drain_a_node_without_postgres_fails_no_request(cluster):
    victim = next(n for n in ("node3", "node2") if n != STATE["pg_node"])
    before = {r for r, n in cluster.replicas().items() if n == victim}
    assert before, f"{victim} runs no replica"
    url = cluster.urls[int(victim[-1]) - 1]
    load = ClusterLoad(cluster.urls, STATE["users"], tag="ct2", **LOAD)
    with load:
        time.sleep(3)
        t0 = time.time()
        cluster.docker("node", "update", "--availability", "drain", victim)

        def moved() -> bool:
            reps = cluster.replicas()
            return len(reps) == REPLICAS and victim not in reps.values()

        t_moved = wait(moved, 90, f"the replicas to leave {victim}")
        time.sleep(6)  # one nginx DNS refresh (5 s) after the move
        t_active = time.time()
        cluster.docker("node", "update", "--availability", "active", victim)
        # Active again: its nginx (global) starts there and answers on its port.
        t_back = wait(lambda: healthy(url), 90, f"nginx on {victim} answering again")
        time.sleep(2)
    after = cluster.replicas()
    assert not before & set(after) and victim not in after.values()
    figure(
        "drain",
        f"{victim} drained: its replicas running elsewhere after {t_moved - t0:.1f} s; "
        f"made active again, its nginx answering after {t_back - t_active:.1f} s",
    )
    figure("drain load", load.summary() + " " + load.account())
    for o in load.error_responses() + [a for r in load.failed_reads() for a in r][:10]:
        print("  ", o.describe())
    # Attempts that got no answer at all met the drained node's stopping nginx; the client
    # sent them to another node at once. No request failed, and no answer was an error.
    assert not load.failed_reads() and not load.failed_creates()
    assert not load.error_responses()
    assert all(c.acked for c in load.creates)


def test_3_kill_a_node_without_postgres(cluster):
    replicas = cluster.replicas()
    candidates = [n for n in ("node2", "node3") if n != STATE["pg_node"]]
    victim = max(candidates, key=lambda n: list(replicas.values()).count(n))
    victim_port = cluster.ports[int(victim[-1]) - 1]
    dead = [t for t in cluster.tasks("app") if t["node"] == victim]
    assert dead, f"{victim} runs no replica"
    dead_ips = {a for t in dead for a in t["addresses"]}
    load = ClusterLoad(cluster.urls, STATE["users"], tag="ct3", **LOAD)
    with load:
        time.sleep(4)
        t_kill = time.time()
        cluster.kill(victim)
        t_down = wait(lambda: cluster.nodes()[victim]["status"] == "Down", 60, f"{victim} down")

        def restored() -> bool:
            reps = cluster.replicas()
            return len(reps) == REPLICAS and victim not in reps.values()

        t_restored = wait(restored, 90, "the replica count restored elsewhere")

        def chose_dead_ip(entry: dict[str, Any]) -> bool:
            return any(f"{ip}:" in entry.get("upstream", "") for ip in dead_ips)

        def clean_stretch() -> bool:
            """The last SETTLE_ENTRIES requests nginx logged (all nodes) avoided dead replicas."""
            log = cluster.nginx_log(t_restored)
            last_dead = max((e["ts"] for e in log if chose_dead_ip(e)), default="")
            return len([e for e in log if e["ts"] > last_dead]) >= SETTLE_ENTRIES

        # nginx re-resolves `app` every 5 s; until it stops choosing the dead replicas (the
        # claim itself, with a generous bound), then as many requests again to watch.
        t_settled = wait(clean_stretch, 60, "nginx to stop choosing the dead replicas", 2)
        settled_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_settled))
        wait(
            lambda: (
                len([e for e in cluster.nginx_log(t_settled) if e["ts"][:19] > settled_iso])
                >= SETTLE_ENTRIES
            ),
            60,
            "requests logged after nginx settled",
            2,
        )
    STATE["victim"] = victim

    # Failed attempts, each explained by the dead node: in flight through its own port when
    # it died; sent to its port afterwards, until the client left it out (sent again at once
    # to another node); or sent by a live node's nginx to a replica on it (nginx's access log
    # names the upstream), which fails only while nginx still holds it as a peer.
    log = cluster.nginx_log(t_kill)
    upstream = {e.get("request_id"): e.get("upstream", "") for e in log}
    in_flight = load.in_flight(t_kill, t_kill)
    failed = load.failures()
    at_port = [o for o in failed if port_of(o) == victim_port]
    through_live = [o for o in failed if o not in at_port]
    to_dead = [
        o
        for o in through_live
        if any(f"{ip}:" in upstream.get(o.request_id, "") for ip in dead_ips)
    ]
    # A create retried while its first attempt's transaction, on a dead replica, still holds
    # its row locks: the retry waits until Postgres ends that session
    # (idle_in_transaction_session_timeout, 15 s), and may outlast the client's timeout.
    dead_keys = {o.key for o in at_port + to_dead if o.key}
    locked = [o for o in through_live if o not in to_dead and o.key in dead_keys]
    for o in failed[:10] + through_live[:10]:
        print("  ", o.describe(), upstream.get(o.request_id))
    figure(
        "kill",
        f"{victim} killed: Down after {t_down - t_kill:.1f} s, replica count restored "
        f"elsewhere after {t_restored - t_kill:.1f} s",
    )
    figure("kill load", load.summary() + " " + load.account())
    figure(
        "kill failures",
        f"{len(failed)} failed attempts of {len(load.outcomes)}: "
        f"{sum(o.start < t_kill for o in at_port)} in flight through {victim}'s port, "
        f"{sum(o.start >= t_kill for o in at_port)} sent to its port after the kill (sent "
        f"elsewhere at once), {len(to_dead)} sent by nginx to its replicas "
        f"({sum(o.start < t_kill for o in to_dead)} of them before the kill), {len(locked)} "
        "create retries that waited on a dead replica's open transaction; "
        f"{len(in_flight)} attempts in flight at the kill",
    )

    # Every read and every create succeeded in the end (retried elsewhere by the client).
    assert not load.failed_reads() and not load.failed_creates()
    unexplained = [o for o in through_live if o not in to_dead + locked]
    assert not unexplained, [o.describe() for o in unexplained[:10]]
    # 0 lost acknowledged writes: every acknowledged create is there, once.
    acked = [c for c in load.creates if c.acked]
    assert acked and len({c.post_id for c in acked}) == len(acked)
    for c in acked:
        r = requests.get(f"{cluster.urls[0]}/api/posts/{c.post_id}", timeout=10)
        assert r.status_code == 200 and r.json()["title"] == c.title, (c.key, r.text)
    # Once: no create's title is stored twice (a retry that made a second row), counted in
    # the database through the API's title search.
    stored = stored_titles(cluster.urls[0], load.tag, {c.title for c in load.creates})
    duplicated = {t: n for t, n in stored.items() if n > 1}
    assert not duplicated, f"posts stored more than once: {duplicated}"
    assert set(stored) >= {c.title for c in acked}
    figure(
        "kill writes",
        f"{len(acked)} acknowledged creates, all present, each stored once "
        f"({sum(stored.values())} rows for {len(load.creates)} creates), 0 lost",
    )

    # nginx stops choosing the dead node's replicas.
    chose_dead = [e for e in log if any(f"{ip}:" in e.get("upstream", "") for ip in dead_ips)]
    last = max((e["ts"] for e in chose_dead), default="none")
    figure(
        "kill nginx",
        f"{len(chose_dead)} nginx log lines named a dead replica, the last at "
        f"{last} (kill at {time.strftime('%H:%M:%S', time.gmtime(t_kill))} UTC)",
    )
    watched = [e for e in log if e["ts"][:19] > settled_iso]
    assert len(watched) >= SETTLE_ENTRIES, f"only {len(watched)} log lines after nginx settled"
    assert not [e for e in chose_dead if e["ts"][:19] > settled_iso], "nginx still chose them"


def test_4_roll_the_app_image_across_nodes_fails_no_request(cluster):
    dockerfile = f"FROM {cluster.app_image}\nLABEL org.flaskstack.test-rebuild={time.time()}\n"
    run("docker", "build", "-q", "-t", cluster.app_image, "-", input=dockerfile, timeout=120)
    before = set(cluster.replicas())
    load = ClusterLoad(cluster.urls, STATE["users"], tag="ct4", **LOAD)
    with load:
        time.sleep(3)
        took = cluster.script(SWARM_SH, "up", timeout=300)
        time.sleep(6)
    after = cluster.replicas()
    figure(
        "roll",
        f"swarm.sh up with a rebuilt app image took {took:.1f} s under load, "
        f"{STATE['victim']} still down; replicas now on {sorted(after.values())}",
    )
    figure("roll load", load.summary() + " " + load.account())
    for o in load.failures()[:20]:
        print("  ", o.describe())
    assert len(after) == REPLICAS and not before & set(after), "not every replica was replaced"
    assert not load.failed_reads() and not load.failed_creates()
    assert not load.error_responses()


def test_5_the_node_comes_back_rejoins_and_takes_work(cluster):
    victim = STATE["victim"]
    url = cluster.urls[int(victim[-1]) - 1]
    t0 = time.time()
    run("docker", "start", f"{NAME}-{victim}", timeout=60)
    t_ready = wait(lambda: cluster.nodes()[victim]["status"] == "Ready", 90, f"{victim} ready")

    t_serving = wait(lambda: healthy(url), 90, f"nginx on {victim} answering")
    nodes = cluster.nodes()
    assert all(n["status"] == "Ready" for n in nodes.values()), nodes

    def managers() -> list[str]:
        return sorted(cluster.docker("node", "ls", "--format", "{{.ManagerStatus}}").stdout.split())

    # Raft reports the manager reachable a few seconds after the node itself is Ready.
    t_manager = wait(lambda: managers() == ["Leader", "Reachable", "Reachable"], 60, "3 managers")
    # New replicas: the placement preference sends them to the node with fewest, the one back.
    # Swarm places a task as its scheduler sees the nodes at that moment, and right after a
    # return it has also placed one elsewhere: add replicas one at a time, up to two per node.
    scaled = REPLICAS
    while victim not in cluster.replicas().values() and scaled < 2 * REPLICAS:
        scaled += 1
        cluster.docker("service", "scale", "--detach", f"{STACK}_app={scaled}")
        try:
            wait(lambda n=scaled: len(cluster.replicas()) == n, 90, f"{scaled} replicas running")
        except AssertionError:
            print(cluster.docker("service", "ps", "--no-trunc", f"{STACK}_app").stdout)
            raise
    assert victim in cluster.replicas().values(), f"{scaled} replicas, none on {victim}"
    t_replica = time.time()
    replicas = cluster.replicas()
    mine = {r for r, n in replicas.items() if n == victim}
    deadline = time.monotonic() + 20
    got: set[str] = set()
    while time.monotonic() < deadline and not got & mine:
        for u in cluster.urls:
            got |= set(served(u, 4))
    assert got & mine, f"no request reached {victim}'s replica {mine}"
    figure(
        "rejoin",
        f"{victim} restarted: Ready after {t_ready - t0:.1f} s, a reachable manager after "
        f"{t_manager - t0:.1f} s, its nginx answering "
        f"after {t_serving - t0:.1f} s, a new replica on it after {t_replica - t0:.1f} s "
        f"(scaled to {scaled}) and serving",
    )


def probe(url: str) -> tuple[float, int | None, bool]:
    """GET /api/posts once: (when, status or None, whether an error answer is the JSON envelope)."""
    t = time.time()
    try:
        r = requests.get(f"{url}/api/posts?limit=1", timeout=(2, 8))
    except requests.RequestException:
        return t, None, False
    if r.status_code < 400:
        return t, r.status_code, True
    try:
        error = r.json()["error"]
        return t, r.status_code, bool(error["code"] and error["message"])
    except (ValueError, KeyError, TypeError):
        return t, r.status_code, False


def test_5b_losing_the_postgres_node_is_a_503_outage_until_it_returns(cluster):
    """Not survived: Postgres and its data live on one node. What clients see, and recovery."""
    pg = STATE["pg_node"]
    others = [u for i, u in enumerate(cluster.urls) if f"node{i + 1}" != pg]
    r = requests.post(
        f"{others[0]}/api/posts",
        headers=STATE["users"][0],
        json={"title": "before the outage", "body": "kept"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    before = r.json()["id"]
    answers: list[tuple[float, int | None, bool]] = []
    t_kill = time.time()
    cluster.kill(pg)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers += [probe(u) for u in others]
        if sum(1 for _, status, _ in answers[-6:] if status == 503) == 6:
            break
        time.sleep(0.5)
    t_restart = time.time()
    run("docker", "start", f"{NAME}-{pg}", timeout=60)
    deadline = time.monotonic() + 180
    back = 0.0
    while time.monotonic() < deadline:
        round_ = [probe(u) for u in cluster.urls]
        answers += round_
        if all(status == 200 for _, status, _ in round_):
            back = time.time()
            break
        time.sleep(1)
    errors = [a for a in answers if a[1] is not None and a[1] >= 500]
    first_503 = min((t for t, status, _ in answers if status == 503), default=0.0)
    figure(
        "postgres node lost",
        f"{pg} killed: first 503 after {first_503 - t_kill:.1f} s; "
        f"{len(errors)} of {len(answers)} answers were 5xx "
        f"({dict(Counter(a[1] for a in errors))}), all JSON: {all(a[2] for a in errors)}; "
        f"{pg} restarted {t_restart - t_kill:.1f} s after the kill, every node answering 200 "
        f"{back - t_restart:.1f} s after that",
    )
    assert first_503, "the outage was silent: no 503"
    assert all(ok for _, _, ok in errors), "an error answer without the JSON envelope"
    assert back, "not every node answered 200 within 180 s of the restart"
    r = requests.get(f"{cluster.urls[0]}/api/posts/{before}", timeout=10)
    assert r.status_code == 200 and r.json()["title"] == "before the outage"


def test_6_tear_down(cluster):
    took = cluster.script(CLUSTER_SH, "down", timeout=120)
    figure("teardown", f"cluster.sh down took {took:.1f} s")
    left = run(
        "docker", "ps", "-aq", "--filter", f"label=org.flaskstack.cluster={NAME}", timeout=60
    ).stdout.split()
    assert not left
    assert run("docker", "network", "inspect", NAME, check=False, timeout=60).returncode != 0
