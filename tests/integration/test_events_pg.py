"""On Postgres, publish() is a NOTIFY on app_events, delivered at commit and never on rollback."""

from __future__ import annotations

import json
import select
import time
from collections.abc import Iterator

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import events
from app.config import database_uri
from app.extensions import db
from tests.conftest import AuthActions


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A raw connection LISTENing on the events channel, as the Tornado host does."""
    dsn = database_uri(database_url, ".").replace("postgresql+psycopg2://", "postgresql://")
    connection = psycopg2.connect(dsn)
    connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    connection.cursor().execute(f"LISTEN {events.CHANNEL}")
    yield connection
    connection.close()


def notifications(connection, wait: float = 1.0) -> list[dict]:
    """Collect the notifications that arrive within wait seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        select.select([connection], [], [], 0.1)
        connection.poll()
    found = [json.loads(n.payload) for n in connection.notifies]
    connection.notifies.clear()
    return found


def test_post_created_is_notified_at_commit(
    client: FlaskClient, auth: AuthActions, listener
) -> None:
    post = client.post("/api/posts", json={"title": "Hi", "body": "x"}, headers=auth.headers()).json
    received = notifications(listener)
    assert [(e["type"], e["post"]["id"]) for e in received] == [("post.created", post["id"])]


def test_rolled_back_events_are_not_notified(app: Flask, listener) -> None:
    with app.app_context():
        db.session.connection()  # inside a transaction: the event waits for its outcome
        events.publish({"type": "test"})
        db.session.rollback()
    assert notifications(listener, wait=0.5) == []
    with app.app_context():
        db.session.connection()
        events.publish({"type": "test"})
        db.session.commit()
    assert notifications(listener) == [{"type": "test"}]


def test_an_event_outside_a_transaction_is_notified_at_once(app: Flask, listener) -> None:
    with app.app_context():
        events.publish({"type": "test", "n": 1}, to=events.user_room(3))
        assert notifications(listener) == [{"type": "test", "n": 1, "to": "user:3"}]
