"""socket.io through a replica's SIGTERM: its clients reconnect elsewhere and miss nothing after.

The draining replica cuts its engine.io sessions without socket.io's disconnect packet, which
clients take as a lost transport: they reconnect through nginx, which sends new sessions to the
replicas that are not draining.
"""

from __future__ import annotations

import time

from tests.sioclient import close_all, login, on_replica, post_through_another_replica
from tests.support import figure

from . import faultkit as fk

POSTS = 20  # created after the clients reconnected; each must reach every client


def test_sigterm_moves_socketio_clients_to_another_replica_and_they_get_the_next_event(
    stack_url,
):
    token, headers = login(stack_url)
    victim = fk.replicas()[0]
    clients = [
        on_replica(stack_url, token, t, victim.hostname, reconnect=True)
        for t in ("websocket", "polling")
    ]
    try:
        t_kill = time.time()
        fk.run("docker", "kill", "-s", "TERM", victim.id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(len(c.replicas) > 1 for c in clients):
            time.sleep(0.1)
        moved = [c.replicas[1:] for c in clients]
        assert all(moved), f"clients did not reconnect: {[c.replicas for c in clients]}"
        assert victim.hostname not in {r for rs in moved for r in rs}, moved
        t_back = time.time()
        # Every event committed after that reaches both, in commit order: a run of posts,
        # sent through whichever replicas nginx picks.
        posts = [post_through_another_replica(stack_url, headers, set()) for _ in range(POSTS)]
        ids = [p["id"] for p in posts]
        for c in clients:
            c.next("post.created", {"post": {"id": ids[-1]}})
            got = [d["post"]["id"] for e, d in c.seen if e == "post.created"]
            assert [i for i in got if i in ids] == ids, (c.client.transport(), got, ids)
        fk.wait_for(victim.id, "exited", timeout=40)
        exit_code = fk.inspect(victim.id)[0]["State"]["ExitCode"]
        assert exit_code == 0
        figure(
            "socketio drain",
            f"websocket and polling clients reconnected to {sorted({c.replica for c in clients})} "
            f"within {t_back - t_kill:.2f} s of SIGTERM; the next {POSTS} posts reached both, "
            "in order; "
            f"replica exited {exit_code}",
        )
    finally:
        close_all(clients)
        fk.run("docker", "start", victim.id)  # the fixture waits for it to be healthy
