"""The realtime scenario's own parts: the events it injects with pg_notify and how a client finds
a post id in a message."""

from __future__ import annotations

import json
import re
import sys

import pytest

from loadtest import realtime
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "tornado"))

from flaskstack.contract import EVENT_CHANNEL


def test_injected_events_use_the_hosts_channel_and_the_apps_event_shape():
    assert realtime.CHANNEL == EVENT_CHANNEL
    sql = realtime.notify_sql(realtime.NOTIFY_IDS + 7, 7)
    assert sql.endswith(";\n") and "\n" not in sql[:-1]  # one statement per line for psql
    match = re.fullmatch(
        r"SELECT (\d+), extract\(epoch FROM clock_timestamp\(\)\), "
        r"pg_notify\('(\w+)', '(.*)'\);\n",
        sql,
    )
    assert match, sql
    event_id, channel, literal = match.groups()
    assert (int(event_id), channel) == (realtime.NOTIFY_IDS + 7, EVENT_CHANNEL)
    payload = literal.replace("''", "'")
    event = json.loads(payload)
    # What the host's Fanout sends on as an app event: a type, no room, the post inside.
    assert event["type"] == "post.created" and "to" not in event
    assert event["post"]["id"] == realtime.NOTIFY_IDS + 7
    # Both client kinds find the id the way they find a real post's.
    assert realtime._post_id(payload) == realtime.NOTIFY_IDS + 7
    assert realtime._post_id("42" + json.dumps(["post.created", event])) == event["post"]["id"]


def test_unknown_event_source_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REALTIME_SOURCE", "carrier-pigeon")
    with pytest.raises(ValueError, match="REALTIME_SOURCE"):
        realtime.event_source()
    monkeypatch.setenv("REALTIME_SOURCE", "")
    assert realtime.event_source() == "posts"


def test_the_lean_client_reads_every_frame_and_its_own_frames_are_accepted():
    """wsclient against the host's /ws on a real Tornado server: the hello, broadcasts of every
    length class (7-, 16- and 64-bit), split over reads or many in one; a ping it sends (masked,
    as Tornado insists) is answered."""
    import asyncio

    from flaskstack import realtime as host_realtime
    from loadtest import wsclient
    from tests.unit.test_fanout import ws_server

    async def main() -> None:
        hub = host_realtime.Hub()
        server, url = await ws_server(hub)
        got: list[str] = []
        conn = await wsclient.connect(url, lambda text, t: got.append(text))
        while not got:
            await asyncio.sleep(0.01)
        assert json.loads(got[0])["type"] == "hello"
        sizes = [10, 200, 70_000, 5, 126, 65_536]
        for n in sizes:
            hub.broadcast(json.dumps({"type": "post.created", "pad": "x" * n}))
        conn.send("ping")
        while len(got) < 2 + len(sizes):
            await asyncio.sleep(0.01)
        assert [len(json.loads(m)["pad"]) for m in got[1:-1]] == sizes
        assert got[-1] == "pong"
        conn.close()
        await asyncio.wait_for(conn.closed, 5)
        server.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
