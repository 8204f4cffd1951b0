"""Malformed and hostile requests: each gets a 4xx JSON error envelope and no row changes."""

from __future__ import annotations

import base64
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect, text
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.extensions import db
from tests.conftest import PASSWORD, AuthActions

Case = tuple[str, int, str, str, dict[str, Any]]


def b64(data: dict) -> str:
    """Base64url-encode a JSON object without padding."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def snapshot(app: Flask) -> dict[str, list[tuple]]:
    """Return every row of every table, ordered, to compare before and after."""
    with app.app_context():
        tables = inspect(db.engine).get_table_names()
        return {
            table: [
                tuple(row)
                for row in db.session.execute(text(f'SELECT * FROM "{table}" ORDER BY 1'))  # noqa: S608
            ]
            for table in tables
        }


def files_in(path: Path) -> list[str]:
    """List the stored upload files."""
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def cases(tokens: dict[str, str], post_id: int) -> list[Case]:
    """Return (name, expected status, method, path, request kwargs) for each malformed request."""
    user = {"Authorization": f"Bearer {tokens['alice']}"}
    other = {"Authorization": f"Bearer {tokens['bob']}"}
    header, claims, _signature = tokens["alice"].split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    forged_claims = b64({**payload, "role": "admin", "sub": "2"})
    boundary, big = encode_multipart({"file": FileStorage(io.BytesIO(b"x" * 2**20), "../../big")})
    register, login, posts = "/api/auth/register", "/api/auth/login", "/api/posts"
    json_type = {"content_type": "application/json"}
    return [
        ("truncated JSON", 400, "post", register, {"data": '{"username": ', **json_type}),
        ("trailing garbage", 400, "post", register, {"data": '{"a": 1} x', **json_type}),
        ("NaN literal", 400, "post", register, {"data": '{"username": NaN}', **json_type}),
        (
            "invalid UTF-8",
            400,
            "post",
            register,
            {"data": b'{"username": "\xff\xfe"}', **json_type},
        ),
        ("empty JSON body", 400, "post", login, {"data": b"", **json_type}),
        ("deeply nested JSON", 400, "post", register, {"data": "[" * 20_000, **json_type}),
        (
            "JSON body over 64 KiB",
            413,
            "post",
            register,
            {"data": " " * 70_000 + "{}", **json_type},
        ),
        (
            "text/plain body",
            415,
            "post",
            register,
            {"data": "username=a", "content_type": "text/plain"},
        ),
        ("form body", 415, "post", login, {"data": {"username": "alice", "password": PASSWORD}}),
        (
            "no content type",
            415,
            "post",
            posts,
            {"data": b'{"title":"t","body":"b"}', "headers": user},
        ),
        ("JSON array", 422, "post", register, {"json": ["alice", PASSWORD]}),
        ("JSON string", 422, "post", register, {"json": "alice"}),
        ("JSON null", 422, "post", login, {"data": "null", **json_type}),
        (
            "username is a number",
            422,
            "post",
            register,
            {"json": {"username": 7, "password": PASSWORD}},
        ),
        (
            "unknown field role",
            422,
            "post",
            register,
            {"json": {"username": "mallory", "password": PASSWORD, "role": "admin"}},
        ),
        ("missing password", 422, "post", register, {"json": {"username": "mallory"}}),
        (
            "oversize username",
            422,
            "post",
            register,
            {"json": {"username": "m" * 10_000, "password": PASSWORD}},
        ),
        (
            "NUL in username",
            422,
            "post",
            register,
            {"json": {"username": "mal\u0000lory", "password": PASSWORD}},
        ),
        (
            "password over 72 bytes",
            422,
            "post",
            register,
            {"json": {"username": "mallory", "password": "\u00e9" * 40}},
        ),
        (
            "lone surrogate password",
            422,
            "post",
            login,
            {"data": '{"username": "alice", "password": "\\ud800\\ud800xxxxxx"}', **json_type},
        ),
        (
            "duplicate username",
            409,
            "post",
            register,
            {"json": {"username": "ALICE", "password": PASSWORD}},
        ),
        (
            "wrong password",
            401,
            "post",
            login,
            {"json": {"username": "alice", "password": "nope-nope"}},
        ),
        ("no token", 401, "post", posts, {"json": {"title": "t", "body": "b"}}),
        (
            "empty bearer",
            401,
            "post",
            posts,
            {"json": {"title": "t", "body": "b"}, "headers": {"Authorization": "Bearer "}},
        ),
        (
            "basic auth",
            401,
            "post",
            posts,
            {"json": {"title": "t", "body": "b"}, "headers": {"Authorization": "Basic YTpi"}},
        ),
        (
            "tampered token",
            401,
            "get",
            "/api/admin/users",
            {"headers": {"Authorization": f"Bearer {header}.{forged_claims}.{_signature}"}},
        ),
        (
            "alg none token",
            401,
            "get",
            "/api/admin/users",
            {
                "headers": {
                    "Authorization": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{forged_claims}."
                }
            },
        ),
        (
            "expired token",
            401,
            "post",
            posts,
            {
                "json": {"title": "t", "body": "b"},
                "headers": {"Authorization": f"Bearer {tokens['expired']}"},
            },
        ),
        ("plain user on admin route", 403, "get", "/api/admin/users", {"headers": user}),
        (
            "title wrong type",
            422,
            "post",
            posts,
            {"json": {"title": ["t"], "body": "b"}, "headers": user},
        ),
        (
            "extra post field",
            422,
            "post",
            posts,
            {"json": {"title": "t", "body": "b", "author_id": 2}, "headers": user},
        ),
        (
            "title too long",
            422,
            "post",
            posts,
            {"json": {"title": "t" * 201, "body": "b"}, "headers": user},
        ),
        (
            "bad Idempotency-Key",
            422,
            "post",
            posts,
            {"json": {"title": "t", "body": "b"}, "headers": {**user, "Idempotency-Key": "a b"}},
        ),
        (
            "reused Idempotency-Key",
            422,
            "post",
            posts,
            {
                "json": {"title": "other", "body": "b"},
                "headers": {**user, "Idempotency-Key": "used-key"},
            },
        ),
        ("huge limit", 422, "get", f"{posts}?limit=99999999999999999999999", {}),
        ("negative limit", 422, "get", f"{posts}?limit=-5", {}),
        ("negative offset", 422, "get", f"{posts}?offset=-1", {}),
        ("float offset", 422, "get", f"{posts}?offset=1.5", {}),
        ("NUL in search", 422, "get", f"{posts}?q=a%00b", {}),
        ("huge post id", 404, "get", f"{posts}/99999999999999999999", {}),
        ("negative post id", 404, "get", f"{posts}/-1", {}),
        (
            "patch someone else's post",
            403,
            "patch",
            f"{posts}/{post_id}",
            {"json": {"title": "mine now"}, "headers": other},
        ),
        ("empty patch", 422, "patch", f"{posts}/{post_id}", {"json": {}, "headers": user}),
        (
            "null title patch",
            422,
            "patch",
            f"{posts}/{post_id}",
            {"json": {"title": None}, "headers": user},
        ),
        ("delete someone else's post", 403, "delete", f"{posts}/{post_id}", {"headers": other}),
        ("delete missing post", 404, "delete", f"{posts}/424242", {"headers": user}),
        ("PUT on a collection", 405, "put", posts, {"json": {}, "headers": user}),
        (
            "upload without file field",
            422,
            "post",
            "/api/uploads",
            {"data": {"other": "x"}, "content_type": "multipart/form-data", "headers": user},
        ),
        ("upload as JSON", 415, "post", "/api/uploads", {"json": {"file": "x"}, "headers": user}),
        (
            "upload too large, path trick name",
            413,
            "post",
            "/api/uploads",
            {
                "data": big,
                "content_type": f"multipart/form-data; boundary={boundary}",
                "headers": user,
            },
        ),
        (
            "upload path trick without token",
            401,
            "post",
            "/api/uploads",
            {
                "data": {"file": (io.BytesIO(b"x"), "../../../etc/passwd")},
                "content_type": "multipart/form-data",
            },
        ),
        ("download path traversal", 404, "get", "/api/uploads/..%2F..%2Fetc%2Fpasswd", {}),
        ("download dot-dot path", 404, "get", "/api/uploads/1/../../../etc/passwd", {}),
        ("unknown route", 404, "get", "/api/../../etc/passwd", {}),
    ]


@pytest.fixture
def prepared(app: Flask, client: FlaskClient, auth: AuthActions) -> tuple[dict[str, str], int]:
    """Create users, a post, an idempotency record and an upload; return tokens and the post id."""
    alice = auth.register("alice")
    auth.register("bob")
    tokens = {
        "alice": auth.login("alice"),
        "bob": auth.login("bob"),
        "expired": auth.token_for(alice["id"], expires=timedelta(seconds=-1)),
    }
    headers = {"Authorization": f"Bearer {tokens['alice']}", "Idempotency-Key": "used-key"}
    post = client.post("/api/posts", json={"title": "t", "body": "b"}, headers=headers).json
    upload = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(b"hello"), "hello.txt")},
        content_type="multipart/form-data",
        headers=headers,
    )
    assert upload.status_code == 201
    return tokens, post["id"]


def test_malformed_requests_get_4xx_json_and_change_nothing(
    app: Flask, client: FlaskClient, prepared: tuple[dict[str, str], int]
) -> None:
    tokens, post_id = prepared
    table_rows = snapshot(app)
    stored_files = files_in(Path(app.config["UPLOAD_DIR"]))
    all_cases = cases(tokens, post_id)
    assert len({name for name, *_ in all_cases}) >= 30
    problems = []
    for name, status, method, path, kwargs in all_cases:
        response = getattr(client, method)(path, **kwargs)
        body = response.get_json(silent=True) or {}
        error = body.get("error", {})
        if not (
            response.status_code == status
            and 400 <= status < 500
            and error.get("status") == status
            and error.get("code")
            and body.get("request_id") == response.headers["X-Request-ID"]
            and "Traceback" not in response.get_data(as_text=True)
        ):
            problems.append(
                f"{name}: {response.status_code} {response.get_data(as_text=True)[:200]}"
            )
    assert problems == []
    assert snapshot(app) == table_rows
    assert files_in(Path(app.config["UPLOAD_DIR"])) == stored_files
