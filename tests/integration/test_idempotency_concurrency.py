"""Idempotency-Key under real concurrency on Postgres: never a second post."""

from __future__ import annotations

import threading

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import IdempotencyKey, Post
from tests.conftest import AuthActions

THREADS = 8


def race(app: Flask, headers_for: list[dict[str, str]], body: dict) -> list:
    """Send one POST /api/posts per headers from its own thread, all released together."""
    barrier = threading.Barrier(len(headers_for))
    responses: list = [None] * len(headers_for)

    def send(index: int) -> None:
        client = app.test_client()
        barrier.wait(timeout=10)
        responses[index] = client.post("/api/posts", json=body, headers=headers_for[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(headers_for))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return responses


def counts(app: Flask) -> tuple[int, int]:
    """Return the numbers of posts and idempotency records."""
    with app.app_context():
        posts = db.session.scalar(select(func.count()).select_from(Post))
        keys = db.session.scalar(select(func.count()).select_from(IdempotencyKey))
    return posts, keys


def test_concurrent_retries_create_one_post(app_factory, auth: AuthActions) -> None:
    app = app_factory(DB_POOL_SIZE=THREADS + 2)
    headers = {**auth.headers(), "Idempotency-Key": "race-1"}
    responses = race(app, [headers] * THREADS, {"title": "once", "body": "only once"})
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created
    assert len({r.data for r in created}) == 1
    assert all(r.json["error"]["code"] == "conflict" for r in responses if r.status_code == 409)
    assert counts(app) == (1, 1)


def test_concurrent_distinct_keys_create_distinct_posts(app_factory, auth: AuthActions) -> None:
    app = app_factory(DB_POOL_SIZE=THREADS + 2)
    base = auth.headers()
    headers = [{**base, "Idempotency-Key": f"k-{i}"} for i in range(THREADS)]
    responses = race(app, headers, {"title": "each", "body": "its own"})
    assert [r.status_code for r in responses] == [201] * THREADS
    assert counts(app) == (THREADS, THREADS)
