"""On SQLite, events reach in-process subscribers after commit, and never on rollback."""

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import events
from app.extensions import db


@pytest.fixture
def received() -> Iterator[list[dict[str, Any]]]:
    """Collect events delivered to a subscriber during the test."""
    seen: list[dict[str, Any]] = []
    events.subscribe(seen.append)
    yield seen
    events.unsubscribe(seen.append)


def test_post_created_event(client: FlaskClient, auth, received) -> None:
    headers = auth.headers()
    post = client.post("/api/posts", json={"title": "Hi", "body": "there"}, headers=headers).json
    assert received == [
        {
            "type": "post.created",
            "post": {
                "id": post["id"],
                "title": "Hi",
                "author": post["author"],
                "created_at": post["created_at"],
                "url": f"/api/posts/{post['id']}",
            },
        }
    ]


def test_events_wait_for_commit_and_vanish_on_rollback(app: Flask, received) -> None:
    with app.app_context():
        db.session.connection()  # a transaction is open: the event waits for its outcome
        events.publish({"type": "test", "n": 1})
        assert received == []
        db.session.rollback()
        db.session.commit()
        assert received == []
        db.session.connection()
        events.publish({"type": "test", "n": 2})
        assert received == []
        db.session.commit()
    assert received == [{"type": "test", "n": 2}]


def test_an_event_outside_a_transaction_is_sent_at_once(app: Flask, received) -> None:
    with app.app_context():
        events.publish({"type": "test", "n": 3}, to=events.user_room(7))
        assert received == [{"type": "test", "n": 3, "to": "user:7"}]


@pytest.mark.parametrize("bad", [{"n": 1}, {"type": 5}, {"type": "x", "to": "user:1"}])
def test_events_need_a_type_and_leave_to_to_publish(app: Flask, bad: dict) -> None:
    with app.app_context(), pytest.raises(ValueError, match="type"):
        events.publish(bad)


def test_oversized_events_are_refused(app: Flask) -> None:
    with app.app_context(), pytest.raises(ValueError, match="8000"):
        events.publish({"type": "big", "data": "x" * 8000})


def test_channel_name() -> None:
    assert events.CHANNEL == "app_events"


def test_the_bus_is_reachable_from_the_app(app: Flask) -> None:
    assert app.extensions["events"].subscribe is events.subscribe
