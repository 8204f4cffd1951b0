"""Realtime events: publish inside the request's transaction, delivered only if it commits.

On Postgres, publish() runs ``pg_notify`` on the request's session: Postgres delivers it at commit
to every listener (the Tornado host LISTENs on CHANNEL and fans out to websockets). Elsewhere
(SQLite), events are held on the session and handed after commit to in-process callbacks
registered with subscribe(), called from the committing thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from .contract import EVENT_CHANNEL, listen_dsn
from .extensions import db

CHANNEL = EVENT_CHANNEL
MAX_PAYLOAD_BYTES = 7999  # Postgres NOTIFY payloads must be shorter than 8000 bytes
_PENDING = "app_events_pending"

log = logging.getLogger(__name__)
_subscribers: list[Callable[[dict[str, Any]], None]] = []


def listen_target(app: Flask) -> tuple[str, str] | None:
    """Where a listener hears this app's events: (libpq address, channel), None off Postgres."""
    dsn = listen_dsn(app.config["SQLALCHEMY_DATABASE_URI"])
    return (dsn, CHANNEL) if dsn else None


def subscribe(callback: Callable[[dict[str, Any]], None]) -> None:
    """Register a callback for events committed in this process (non-Postgres databases)."""
    _subscribers.append(callback)


def unsubscribe(callback: Callable[[dict[str, Any]], None]) -> None:
    """Remove a callback registered with subscribe()."""
    _subscribers.remove(callback)


def publish(event_: dict[str, Any]) -> None:
    """Queue an event in the current transaction; it is delivered only if that commits."""
    payload = json.dumps(event_, separators=(",", ":"), ensure_ascii=False)
    if len(payload.encode("utf-8")) > MAX_PAYLOAD_BYTES:
        raise ValueError("event payload exceeds the NOTIFY limit of 8000 bytes")
    session = db.session()
    connection = session.connection()  # joins (or begins) the transaction the event belongs to
    if connection.dialect.name == "postgresql":
        params = {"channel": CHANNEL, "payload": payload}
        session.execute(text("SELECT pg_notify(:channel, :payload)"), params)
    else:
        session.info.setdefault(_PENDING, []).append(json.loads(payload))


@event.listens_for(Session, "after_commit")
def _deliver(session: Session) -> None:
    """Hand the committed transaction's events to the subscribers."""
    for item in session.info.pop(_PENDING, []):
        for callback in list(_subscribers):
            try:
                callback(item)
            except Exception:
                log.exception("event subscriber failed")


@event.listens_for(Session, "after_soft_rollback")
def _discard(session: Session, _previous: Any) -> None:
    """Drop events of a rolled-back transaction."""
    session.info.pop(_PENDING, None)
