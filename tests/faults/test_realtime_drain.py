"""socket.io through a replica's SIGTERM: its clients reconnect elsewhere and miss nothing after.

The draining replica cuts its engine.io sessions without socket.io's disconnect packet, which
clients take as a lost transport: they reconnect through nginx, which sends new sessions to the
replicas that are not draining.
"""

from __future__ import annotations

import time

from tests.sioclient import Listener, close_all, login, post_through_another_replica
from tests.support import figure

from . import faultkit as fk


def on_replica(stack_url: str, token: str, transport: str, replica: str) -> Listener:
    """A reconnecting client whose first session is held by `replica`."""
    spare = []
    try:
        for _ in range(30):
            client = Listener(stack_url, token, transport, reconnect=True)
            if client.replica == replica:
                return client
            spare.append(client)
        raise AssertionError(f"no {transport} session landed on {replica}")
    finally:
        close_all(spare)


def test_sigterm_moves_socketio_clients_to_another_replica_and_they_get_the_next_event(
    stack_url,
):
    token, headers = login(stack_url)
    victim = fk.replicas()[0]
    clients = [on_replica(stack_url, token, t, victim.hostname) for t in ("websocket", "polling")]
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
        post = post_through_another_replica(stack_url, headers, set())
        for c in clients:
            c.next("post.created", {"post": {"id": post["id"]}})
        fk.wait_for(victim.id, "exited", timeout=40)
        exit_code = fk.inspect(victim.id)[0]["State"]["ExitCode"]
        assert exit_code == 0
        figure(
            "socketio drain",
            f"websocket and polling clients reconnected to {sorted({c.replica for c in clients})} "
            f"within {t_back - t_kill:.2f} s of SIGTERM; the next post reached both; "
            f"replica exited {exit_code}",
        )
    finally:
        close_all(clients)
        fk.run("docker", "start", victim.id)  # the fixture waits for it to be healthy
