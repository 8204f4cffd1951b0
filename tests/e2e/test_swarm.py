"""The stack on a single-node Docker Swarm, deployed and removed by deploy/scripts/swarm.sh.

Its own stack (SWARM_STACK), env file (fresh secrets, in a tmp dir) and a free port: it neither
needs nor touches the compose test stack `make test-e2e` runs beside it. If this node is in no
swarm, swarm.sh creates a single-node one and leaves it again on tear-down. Traffic goes to
127.0.0.1 only, although Swarm publishes the port on every interface. Figures are printed as
`FIGURE swarm ...` lines (pytest -s).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
import requests

from tests import support
from tests.faults.loadgen import LoadGen, login_users
from tests.support import ROOT, free_port, run, stack, wait_for

SWARM = str(ROOT / "deploy" / "scripts" / "swarm.sh")
STACK = "flaskstack-swarmtest"
REPLICAS = 3
BUILT_IMAGE = "flaskstack/app:local"  # from `make images`


def figure(name: str, text: str) -> None:
    """A measured figure, printed and kept with the other e2e figures."""
    support.figure(f"swarm {name}", text)


@dataclass
class Deployment:
    url: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    app_image: str = ""  # this test's own tag, rebuilt by the update test

    def swarm(self, *args: str, timeout: float = 240, **overrides: str) -> float:
        """Run swarm.sh with this deployment's settings; seconds it took."""
        start = time.monotonic()
        result = run(SWARM, *args, env={**self.env, **overrides}, timeout=timeout, check=False)
        print(result.stdout + result.stderr, flush=True)
        assert result.returncode == 0, f"swarm.sh {' '.join(args)} failed (output above)"
        return time.monotonic() - start

    def service(self, name: str) -> dict:
        return json.loads(
            run("docker", "service", "inspect", f"{STACK}_{name}", timeout=60).stdout
        )[0]

    def task_hostnames(self, name: str) -> set[str]:
        """X-Served-By of the service's tasks meant to run (not those draining): Swarm names
        a task's container host after the first 12 characters of the container id."""
        tasks = run(
            "docker",
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            f"{STACK}_{name}",
            timeout=60,
        ).stdout.split()
        if not tasks:
            return set()
        out = run(
            "docker",
            "inspect",
            "-f",
            "{{.Status.State}} {{.Status.ContainerStatus.ContainerID}}",
            *tasks,
            timeout=60,
        ).stdout
        return {
            cid[:12]
            for state, cid in (line.split() for line in out.splitlines())
            if state == "running"
        }


@pytest.fixture(scope="module")
def swarm_stack(tmp_path_factory) -> Deployment:
    tmp = tmp_path_factory.mktemp("swarm")
    env_file = tmp / "swarm.env"
    port = free_port("")  # Swarm publishes on every address: free on all of them
    # The app image under a tag of this test's own, so the update test can rebuild it.
    app_image = f"flaskstack/app:swarmtest-{secrets.token_hex(3)}"
    # Nothing of the compose test stack's settings: its project, env file and URLs.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PROJECT", "ENV_FILE", "STACK_URL", "BASELINE_URL", "APP_REPLICAS"}
    }
    env.update(
        ENV_FILE=str(env_file),
        SWARM_STACK=STACK,
        # This engine's own single-node swarm, even when `make cluster-up` left a cluster.
        SWARM_CLUSTER="0",
        # Outside the tmp dir: a run after an interrupted one still finds the note that the
        # swarm was created by this test, and leaves it.
        SWARM_STATE_DIR=str(ROOT / "build" / "swarm-test"),
        SWARM_TIMEOUT="150",
        APP_REPLICAS=str(REPLICAS),
        APP_IMAGE=app_image,
    )
    # Like the Makefile's test env: .env.example with fresh secrets, its own port.
    stack("env", env=env, timeout=60)
    with env_file.open("a", encoding="utf-8") as f:
        f.write(f"SWARM_PORT={port}\n")
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, app_image=app_image)
    run("docker", "tag", BUILT_IMAGE, app_image, timeout=60)
    try:
        # A stack left by an interrupted run (same name) would hold volumes and a port.
        deployment.swarm("down", "-v", timeout=180)
        deployment.timings["deploy"] = deployment.swarm("up")
        figure("deploy", f"swarm.sh up took {deployment.timings['deploy']:.1f} s")
        yield deployment
    finally:
        try:
            deployment.timings["teardown"] = deployment.swarm("down", "-v", timeout=180)
            figure("teardown", f"swarm.sh down -v took {deployment.timings['teardown']:.1f} s")
        finally:
            run("docker", "rmi", app_image, check=False, timeout=60)
    assert not run(
        "docker",
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.stack.namespace={STACK}",
        timeout=60,
    ).stdout.split(), "containers of the test stack are left"


def served_by(url: str, n: int) -> list[str]:
    """X-Served-By of n GETs, each on a new connection (separate clients)."""
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: requests.get(url, timeout=10), range(n)))
    assert [r.status_code for r in responses] == [200] * n
    return [r.headers["X-Served-By"] for r in responses]


def test_services_as_swarm_runs_them(swarm_stack):
    app = swarm_stack.service("app")
    spec = app["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == REPLICAS
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    update = spec["UpdateConfig"]
    assert (update["Order"], update["Parallelism"], update["FailureAction"]) == (
        "start-first",
        1,
        "rollback",
    )
    assert update["Delay"] > 5 * 10**9  # longer than nginx's 5 s DNS refresh
    assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 256 * 2**20
    # The devserver baseline is not deployed, so its port is not published.
    services = run(
        "docker",
        "service",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        f"label=com.docker.stack.namespace={STACK}",
        timeout=60,
    ).stdout.split()
    assert sorted(services) == [f"{STACK}_{s}" for s in ("app", "migrate", "nginx", "postgres")]
    ports = swarm_stack.service("nginx")["Endpoint"]["Ports"]
    assert [(p["TargetPort"], p["PublishMode"]) for p in ports] == [(8080, "host")]


def test_requests_are_spread_over_every_replica(swarm_stack):
    replicas = swarm_stack.task_hostnames("app")
    assert len(replicas) == REPLICAS
    # nginx re-resolves `app` every 5 s: give it one refresh after the deploy.
    deadline = time.monotonic() + 15
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != replicas:
        seen |= set(served_by(f"{swarm_stack.url}/bench/json", 30))
    assert seen == replicas
    counts = served_by(f"{swarm_stack.url}/bench/json", 60)
    figure("spread", f"60 GETs: {sorted(counts.count(r) for r in replicas)} per replica")
    assert requests.get(f"{swarm_stack.url}/api/posts", timeout=10).status_code == 200


def test_rolling_update_under_load_fails_no_request(swarm_stack):
    """`make images` then `make swarm-up`: a rebuilt image under the same tag rolls out."""
    url = swarm_stack.url
    # A new image (one more label) under the tag the stack runs, as a rebuild leaves it.
    dockerfile = f"FROM {swarm_stack.app_image}\nLABEL org.flaskstack.test-rebuild={time.time()}\n"
    run("docker", "build", "-q", "-t", swarm_stack.app_image, "-", input=dockerfile, timeout=60)
    new_id = run(
        "docker", "image", "inspect", "-f", "{{.Id}}", swarm_stack.app_image, timeout=60
    ).stdout
    before = swarm_stack.task_hostnames("app")
    users = login_users(url, 4)
    load = LoadGen(url, users, rate=40, workers=12, retry_deadline=30, tag="swarm")
    with load:
        time.sleep(3)
        update_start = time.time()
        took = swarm_stack.swarm("up")  # the same env file and settings
        # Until nginx has every new replica among its peers (its DNS refresh is every 5 s),
        # then a few more seconds' worth of requests, which only new replicas may answer.
        new_replicas, t_up = swarm_stack.task_hostnames("app"), time.time()
        wait_for(
            lambda: (
                {o.served_by for o in list(load.outcomes) if o.ok and o.start > t_up}
                >= new_replicas
            ),
            60,
            "every new replica to serve",
        )
        after_start = time.time()
        wait_for(
            lambda: sum(o.start > after_start for o in list(load.outcomes)) >= 120,
            60,
            "120 requests after that",
        )
    swarm_stack.timings["update"] = took
    figure("rolling update", f"swarm.sh up with a rebuilt app image took {took:.1f} s under load")
    figure("rolling update load", load.summary())

    failures = load.failures()
    if failures:
        for outcome in failures[:30]:
            print(f"  failed: {outcome.describe()}")
        # nginx's own account (its error log; the access log lines are JSON), and the load.
        logs = run(
            "docker",
            "service",
            "logs",
            "--raw",
            "--since",
            f"{int(update_start)}",
            f"{STACK}_nginx",
            check=False,
            timeout=60,
        )
        errors = [line for line in (logs.stdout + logs.stderr).splitlines() if "[" in line[:40]]
        print("nginx errors during the update:", *errors[-40:], sep="\n  ")
        print("load average:", os.getloadavg())
    assert not failures, f"{len(failures)} failed requests (listed above)"

    app = swarm_stack.service("app")
    labels = app["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"]
    assert labels["org.flaskstack.image-id"] == new_id.strip()
    assert app["UpdateStatus"]["State"] == "completed"
    after = swarm_stack.task_hostnames("app")
    assert len(after) == REPLICAS and not after & before, "not every replica was replaced"

    assert load.creates and all(c.acked for c in load.creates)
    ids = [c.post_id for c in load.creates]
    assert len(ids) == len(set(ids)), "a create landed twice"
    # Load went on through the whole update, and ended on the new replicas only.
    starts = sorted(o.start for o in load.outcomes)
    assert starts[0] < update_start and starts[-1] > update_start + took
    during = [t for t in starts if update_start <= t <= update_start + took]
    edges = [update_start, *during, update_start + took]
    gaps = [b - a for a, b in pairwise(edges)]
    assert during, "no request was sent during the update"
    figure("rolling update pace", f"longest time with no request sent: {max(gaps):.1f} s")
    tail = {o.served_by for o in load.outcomes if o.start > after_start}
    assert tail and tail <= after, f"old replicas still answered: {tail - after}"
