"""TechEmpower endpoints follow the benchmark's verification rules."""

import html
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import bench
from app.extensions import db
from app.models import World


def test_plaintext(client: FlaskClient) -> None:
    response = client.get("/bench/plaintext")
    assert response.data == b"Hello, World!"
    assert response.headers["Content-Type"] == "text/plain"


def test_json(client: FlaskClient) -> None:
    response = client.get("/bench/json")
    assert response.json == {"message": "Hello, World!"}
    assert response.mimetype == "application/json"


def test_db(client: FlaskClient) -> None:
    world = client.get("/bench/db").json
    assert set(world) == {"id", "randomNumber"}
    assert 1 <= world["id"] <= 10_000
    assert 1 <= world["randomNumber"] <= 10_000


@pytest.mark.parametrize(
    ("value", "count"),
    [("5", 5), ("0", 1), ("-3", 1), ("abc", 1), ("", 1), ("501", 500), ("9" * 40, 1)],
)
def test_queries_clamps(client: FlaskClient, value: str, count: int) -> None:
    rows = client.get(f"/bench/queries?queries={value}").json
    assert len(rows) == count
    assert all(set(r) == {"id", "randomNumber"} for r in rows)


def test_updates_persist(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        before = {i: n for i, n in db.session.execute(select(World.id, World.random_number))}
    rows = client.get("/bench/updates?queries=20").json
    assert len(rows) == 20
    assert len({r["id"] for r in rows}) == 20
    with app.app_context():
        after = {i: n for i, n in db.session.execute(select(World.id, World.random_number))}
    # Each row it answered with has a new number, and that number is what is stored now.
    assert [r["id"] for r in rows if r["randomNumber"] == before[r["id"]]] == []
    assert {r["id"]: after[r["id"]] for r in rows} == {r["id"]: r["randomNumber"] for r in rows}
    # Nothing else changed.
    assert {i: n for i, n in after.items() if n != before[i]}.keys() == {r["id"] for r in rows}


def test_fortunes(client: FlaskClient) -> None:
    response = client.get("/bench/fortunes")
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    text = response.get_data(as_text=True)
    assert text.startswith("<!DOCTYPE html><html><head><title>Fortunes</title></head>")
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", text)
    assert len(rows) == 13
    assert ("0", "Additional fortune added at request time.") in rows
    messages = [html.unescape(message) for _, message in rows]
    assert messages == sorted(messages)
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert (
        "\u30d5\u30ec\u30fc\u30e0\u30ef\u30fc\u30af\u306e\u30d9\u30f3\u30c1\u30de\u30fc\u30af"
        in text
    )


@pytest.mark.parametrize(("value", "slept"), [("20", 20), ("5000", 1000), ("-1", 0), ("x", 0)])
def test_io_sleeps_capped(client: FlaskClient, monkeypatch, value: str, slept: int) -> None:
    calls: list[float] = []
    monkeypatch.setattr(bench.time, "sleep", calls.append)
    assert client.get(f"/bench/io?ms={value}").json == {"slept_ms": slept}
    assert calls == [slept / 1000]
