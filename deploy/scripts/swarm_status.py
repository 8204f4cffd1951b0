"""Say which services of a Swarm stack are not up yet.

deploy/scripts/swarm.sh (`pending`, which `up` polls and `status` prints) feeds this two or
three JSON arrays on stdin, `docker service inspect` of the stack's services, `docker inspect` of
their tasks (`[]` when there are none) and, optionally, `docker node inspect` of the swarm's
nodes, and passes when the deploy started (UTC, 2006-01-02T15:04:05; `0000` for any time):

    { docker service inspect $ids; echo; docker inspect $tasks; echo;
      docker node inspect $nodes; } | python3 deploy/scripts/swarm_status.py 2024-05-01T12:00:00

It prints one line per unfinished service ("name: why"), nothing when the stack is up, and a
line FATAL when waiting cannot help (an update of this deploy paused or rolled back). A
one-shot (restart policy on-failure) is done when its newest task completed; any other service
when its update (if any) completed and exactly the wanted replicas run, all of the current
spec (Swarm counts a task with a healthcheck as running only once it is healthy). A global
service wants one task on every node that is ready and active (without the nodes: one task).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

FATAL = "FATAL"


def read_documents(
    text: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The services, the tasks and the nodes (None when absent), from JSON arrays in a row."""
    decoder = json.JSONDecoder()
    services, end = decoder.raw_decode(text)
    rest = text[end:].lstrip()
    tasks, end = decoder.raw_decode(rest)
    rest = rest[end:].strip()
    nodes = decoder.raw_decode(rest)[0] if rest else None
    return services, tasks, nodes


def ready_nodes(nodes: list[dict[str, Any]]) -> set[str]:
    """The ids of the nodes that take tasks: ready and active."""
    return {
        n["ID"]
        for n in nodes
        if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"
    }


def norm(value: Any) -> Any:
    """A task spec as the service holds it: tasks lack empty and false fields and Runtime."""
    if isinstance(value, dict):
        value = {k: norm(v) for k, v in value.items() if k != "Runtime"}
        return {k: v for k, v in value.items() if v not in ({}, [], None, "", False)}
    if isinstance(value, list):
        return [norm(v) for v in value]
    return value


def last_error(tasks: list[dict[str, Any]]) -> str:
    """The error of the most recently updated task that has one, else ""."""
    errors = [t["Status"].get("Err", "") for t in sorted(tasks, key=lambda t: t["UpdatedAt"])]
    return next((e for e in reversed(errors) if e), "")


def one_shot_pending(name: str, tasks: list[dict[str, Any]], why: str) -> Iterator[str]:
    """A one-shot is done when its newest task completed (`up` creates one-shots afresh)."""
    newest = sorted(tasks, key=lambda t: t["CreatedAt"], reverse=True)
    state = newest[0]["Status"]["State"] if newest else "not started"
    if state != "complete":
        yield f"{name}: {state}{why}"


def service_pending(
    svc: dict[str, Any],
    tasks: list[dict[str, Any]],
    since: str,
    nodes: set[str] | None = None,
) -> Iterator[str]:
    """Why the service `svc`, with its tasks `tasks`, is not up; nothing when it is.

    `nodes`: the ids of the nodes that take tasks (None: unknown).
    """
    name, spec = svc["Spec"]["Name"], norm(svc["Spec"]["TaskTemplate"])
    error = last_error(tasks)
    why = f" (last error: {error})" if error else ""
    if (spec.get("RestartPolicy") or {}).get("Condition") == "on-failure":
        yield from one_shot_pending(name, tasks, why)
        return
    update = svc.get("UpdateStatus") or {}
    state = update.get("State", "")
    if state in ("updating", "rollback_started"):
        yield f"{name}: {state}"
        return
    if (
        state in ("paused", "rollback_paused", "rollback_completed")
        and update.get("CompletedAt", update.get("StartedAt", "")) >= since
    ):
        yield f"{name}: update {state}: {update.get('Message', '')}"
        yield FATAL
        return
    running = [
        t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    ]
    if "Global" in svc["Spec"]["Mode"]:
        # One task per node that takes tasks; one on a node that is down does not count.
        want = len(nodes) if nodes is not None else 1
        running = [t for t in running if nodes is None or t.get("NodeID") in nodes]
    else:
        want = svc["Spec"]["Mode"].get("Replicated", {}).get("Replicas", 1)
    fresh = [t for t in running if norm(t["Spec"]) == spec]
    if len(running) != want or len(fresh) != want:
        yield f"{name}: {len(fresh)}/{want} running{why}"


def pending(
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    since: str,
    nodes: list[dict[str, Any]] | None = None,
) -> Iterator[str]:
    """The report's lines for every service, by name."""
    ready = ready_nodes(nodes) if nodes is not None else None
    for svc in sorted(services, key=lambda s: s["Spec"]["Name"]):
        mine = [t for t in tasks if t["ServiceID"] == svc["ID"]]
        yield from service_pending(svc, mine, since, ready)


def main(argv: list[str]) -> int:
    """Read the inspect output on stdin, print what is pending; argv[1]: when the deploy began."""
    services, tasks, nodes = read_documents(sys.stdin.read())
    for line in pending(services, tasks, argv[1], nodes):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
