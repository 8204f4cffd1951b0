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
