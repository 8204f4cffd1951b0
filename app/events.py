"""Realtime events: publish inside the request's transaction, delivered only if it commits.

An event is a JSON object with a ``type``. publish() sends it to every realtime client (the
host's /ws and socket.io), or with ``to=`` only to one socket.io room, such as a user's
(user_room): every socket.io connection joins its user's room at connect (authenticate).

On Postgres, publish() runs ``pg_notify`` on the request's session: Postgres delivers it at commit
to every listener (each replica's host LISTENs on CHANNEL and fans out to its own clients).
Elsewhere (SQLite), events are held on the session and handed after commit to in-process callbacks
registered with subscribe(), called from the committing thread. Outside a transaction, publish()
commits its own, so an event from a view that writes nothing is not lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from flaskstack.contract import EVENT_CHANNEL, listen_dsn

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


def user_room(user_id: int) -> str:
    """The socket.io room that holds every connection of one user."""
    return f"user:{user_id}"


def publish(event_: dict[str, Any], *, to: str | None = None) -> None:
    """Send an event to every realtime client, or only to the socket.io room `to`.

    Inside a transaction the event is delivered if and when that commits; outside one, at once.
    Raises ValueError for an event without a string ``type``, with a ``to`` key of its own, or
    over NOTIFY's 8000-byte limit: it is refused here, never dropped on the way.
    """
    if not isinstance(event_.get("type"), str) or "to" in event_:
        raise ValueError("an event is a JSON object with a string 'type' and no 'to' key")
    message = {**event_, "to": to} if to is not None else event_
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    size = len(payload.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"event payload is {size} bytes, over Postgres NOTIFY's 8000-byte limit")
    session = db.session()
    own_transaction = not session.in_transaction()
    connection = session.connection()  # joins (or begins) the transaction the event belongs to
    if connection.dialect.name == "postgresql":
        params = {"channel": CHANNEL, "payload": payload}
        session.execute(text("SELECT pg_notify(:channel, :payload)"), params)
    else:
        session.info.setdefault(_PENDING, []).append(json.loads(payload))
    if own_transaction:
        session.commit()


def authenticate(app: Flask, auth: Any) -> str:
    """The room of the user whose access token a realtime client presents at connect.

    `auth` is the socket.io connect payload, ``{"token": "<access token>"}``: the same JWT as the
    API's bearer token, checked the same way (signature, expiry, type, the user still exists).
    Raises PermissionError with the reason. Blocks on the database: call it off the event loop.
    """
    from flask_jwt_extended import decode_token

    from .models import User

    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise PermissionError("missing token: connect with auth={'token': <access token>}")
    with app.app_context():
        try:
            claims = decode_token(token)
        except Exception as exc:  # every PyJWT and flask-jwt-extended rejection
            raise PermissionError(f"invalid token: {exc}") from None
        subject = claims.get("sub")
        if claims.get("type") != "access" or not isinstance(subject, str):
            raise PermissionError("invalid token: not an access token")
        if not subject.isdigit() or len(subject) > 9 or db.session.get(User, int(subject)) is None:
            raise PermissionError("unknown user")
    return user_room(int(subject))


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
