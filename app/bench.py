"""TechEmpower Framework Benchmarks endpoints, to its rules, plus /bench/io for a slow upstream."""

from __future__ import annotations

import random
import time
from typing import NamedTuple

from flask import Blueprint, Response, jsonify, render_template, request
from sqlalchemy import bindparam, select, update

from .errors import APIError
from .extensions import db
from .models import Fortune, World

bp = Blueprint("bench", __name__, url_prefix="/bench")

WORLD_ROWS = 10_000
MAX_QUERIES = 500
MAX_IO_MS = 1000
EXTRA_FORTUNE = "Additional fortune added at request time."
# Built once: SQLAlchemy memoises a statement's cache key on the object, so executing the same
# statement skips building the expression and its key on every request (about 8 % of a
# replica's GIL samples on /bench/db when they were built per call).
WORLD_NUMBER = select(World.random_number).where(World.id == bindparam("world_id"))
ALL_FORTUNES = select(Fortune)


class FortuneRow(NamedTuple):
    """A fortune as rendered (the extra one is never stored)."""

    id: int
    message: str


def clamp_arg(name: str, low: int, high: int) -> int:
    """Read an integer argument clamped to [low, high]; anything not a number means low."""
    raw = request.args.get(name, "")
    try:
        value = int(raw) if len(raw) <= 10 else low
    except ValueError:
        value = low
    return max(low, min(high, value))


def random_id() -> int:
    """Return a random World id."""
    return random.randint(1, WORLD_ROWS)


def new_number(old: int) -> int:
    """Return a random number in 1..10000 other than old."""
    number = random.randint(1, WORLD_ROWS - 1)
    return number + 1 if number >= old else number


def get_world(world_id: int) -> dict[str, int]:
    """Fetch one World row as its JSON shape; 503 when the table was never seeded."""
    number = db.session.scalar(WORLD_NUMBER, {"world_id": world_id})
    if number is None:
        raise APIError(503, "Benchmark tables are not seeded; run setup-db.", "not_seeded")
    return {"id": world_id, "randomNumber": number}


@bp.get("/plaintext")
def plaintext() -> Response:
    """Return the plaintext test's body."""
    response = Response(b"Hello, World!")
    response.headers["Content-Type"] = "text/plain"
    return response


@bp.get("/json")
def json_() -> Response:
    """Return the JSON serialisation test's object (built per request, as the rules require)."""
    return jsonify(message="Hello, World!")


@bp.get("/db")
def single_query() -> Response:
    """Return one random World row."""
    return jsonify(get_world(random_id()))


@bp.get("/queries")
def multiple_queries() -> Response:
    """Return N random World rows, one query each (N clamped to 1..500)."""
    count = clamp_arg("queries", 1, MAX_QUERIES)
    return jsonify([get_world(random_id()) for _ in range(count)])


@bp.get("/updates")
def updates() -> Response:
    """Read N random rows one by one, give each a new randomNumber, and write them back."""
    count = clamp_arg("queries", 1, MAX_QUERIES)
    worlds = [get_world(world_id) for world_id in random.sample(range(1, WORLD_ROWS + 1), count)]
    for world in worlds:
        world["randomNumber"] = new_number(world["randomNumber"])
    # Sorted by id so concurrent batches lock rows in the same order and cannot deadlock.
    rows = [{"id": w["id"], "random_number": w["randomNumber"]} for w in worlds]
    rows.sort(key=lambda row: row["id"])
    db.session.execute(update(World), rows)
    db.session.commit()
    return jsonify(worlds)


@bp.get("/fortunes")
def fortunes() -> Response:
    """Render all fortunes plus one added at request time, sorted by message, escaped."""
    rows = [FortuneRow(f.id, f.message) for f in db.session.scalars(ALL_FORTUNES)]
    rows.append(FortuneRow(0, EXTRA_FORTUNE))
    rows.sort(key=lambda row: row.message)
    response = Response(render_template("fortunes.html", fortunes=rows))
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    return response


@bp.get("/io")
def io() -> Response:
    """Sleep ms milliseconds (capped), standing for a slow upstream call in a worker thread."""
    delay = clamp_arg("ms", 0, MAX_IO_MS)
    time.sleep(delay / 1000)
    return jsonify(slept_ms=delay)
