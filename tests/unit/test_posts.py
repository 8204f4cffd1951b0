"""Posts CRUD, pagination, search, ownership and Idempotency-Key."""

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.extensions import db
from app.models import IdempotencyKey, Post, utcnow
from tests.conftest import AuthActions


def create(client: FlaskClient, headers: dict, title: str = "Hello", body: str = "World", **kw):
    """POST a post and return the response."""
    return client.post("/api/posts", json={"title": title, "body": body}, headers=headers, **kw)


def count_posts(app: Flask) -> int:
    """Count posts in the database."""
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Post))


def test_create_and_show(client: FlaskClient, auth: AuthActions) -> None:
    response = create(client, auth.headers())
    assert response.status_code == 201
    post = response.json
    assert post["title"] == "Hello"
    assert post["author"]["username"] == "alice"
    assert post["created_at"].endswith("Z")
    assert response.headers["Location"] == f"/api/posts/{post['id']}"
    assert client.get(f"/api/posts/{post['id']}").json == post


def test_create_needs_a_token(client: FlaskClient) -> None:
    assert client.post("/api/posts", json={"title": "a", "body": "b"}).status_code == 401


def test_list_paginates_newest_first(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    for i in range(5):
        create(client, headers, title=f"post {i}")
    page = client.get("/api/posts?limit=2&offset=1").json
    assert [p["title"] for p in page["items"]] == ["post 3", "post 2"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)


def test_search_is_literal_and_case_insensitive(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    create(client, headers, title="100% Flask", body="a")
    create(client, headers, title="Tornado", body="behind NGINX")
    create(client, headers, title="other", body="plain")
    assert [p["title"] for p in client.get("/api/posts?q=nginx").json["items"]] == ["Tornado"]
    assert [p["title"] for p in client.get("/api/posts?q=%25").json["items"]] == ["100% Flask"]
    assert client.get("/api/posts?q=_").json["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=1.5",
        "offset=-1",
        "offset=99999999999999999999",
        "limit=" + "9" * 5000,
        "q=" + "x" * 201,
        "q=%00",
    ],
)
def test_list_rejects_bad_parameters(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/posts?{query}")
    assert response.status_code == 422
    assert response.json["error"]["fields"]


def test_show_missing_is_404(client: FlaskClient) -> None:
    response = client.get("/api/posts/12345")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_owner_can_patch(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    post = create(client, headers).json
    response = client.patch(f"/api/posts/{post['id']}", json={"title": "New"}, headers=headers)
    assert response.status_code == 200
    assert (response.json["title"], response.json["body"]) == ("New", "World")


def test_other_user_cannot_patch_or_delete(client: FlaskClient, auth: AuthActions) -> None:
    post = create(client, auth.headers("alice")).json
    bob = auth.headers("bob")
    assert (
        client.patch(f"/api/posts/{post['id']}", json={"title": "x"}, headers=bob).status_code
        == 403
    )
    assert client.delete(f"/api/posts/{post['id']}", headers=bob).status_code == 403


def test_admin_can_patch_and_delete(client: FlaskClient, auth: AuthActions) -> None:
    post = create(client, auth.headers("alice")).json
    admin = auth.headers("root", role="admin")
    assert (
        client.patch(f"/api/posts/{post['id']}", json={"body": "x"}, headers=admin).status_code
        == 200
    )
    assert client.delete(f"/api/posts/{post['id']}", headers=admin).status_code == 204


def test_owner_can_delete(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    post = create(client, headers).json
    response = client.delete(f"/api/posts/{post['id']}", headers=headers)
    assert response.status_code == 204
    assert response.data == b""
    assert client.get(f"/api/posts/{post['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": "t"}, "body"),
        ({"title": "", "body": "b"}, "title"),
        ({"title": "   ", "body": "b"}, "title"),
        ({"title": 1, "body": "b"}, "title"),
        ({"title": ["t"], "body": "b"}, "title"),
        ({"title": None, "body": "b"}, "title"),
        ({"title": "t", "body": "b", "extra": 1}, "extra"),
        ({"title": "t" * 201, "body": "b"}, "title"),
        ({"title": "a\u0000b", "body": "b"}, "title"),
        ({"title": "\ud800", "body": "b"}, "title"),
    ],
)
def test_create_validation(client: FlaskClient, auth: AuthActions, body, field) -> None:
    response = client.post("/api/posts", json=body, headers=auth.headers())
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_empty_patch_is_422(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    post = create(client, headers).json
    assert client.patch(f"/api/posts/{post['id']}", json={}, headers=headers).status_code == 422


def test_body_must_be_json(client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    form = client.post("/api/posts", data={"title": "t", "body": "b"}, headers=headers)
    assert form.status_code == 415
    broken = client.post(
        "/api/posts", data='{"title": ', content_type="application/json", headers=headers
    )
    assert broken.status_code == 400
    assert broken.json["error"]["code"] == "malformed_json"
    listed = client.post("/api/posts", json=["title", "body"], headers=headers)
    assert listed.status_code == 422


def test_idempotent_retry_replays_the_first_result(
    app: Flask, client: FlaskClient, auth: AuthActions
) -> None:
    headers = {**auth.headers(), "Idempotency-Key": "retry-1"}
    first = create(client, headers)
    second = create(client, headers)
    assert first.status_code == second.status_code == 201
    assert first.data == second.data
    assert second.headers["Idempotent-Replayed"] == "true"
    assert count_posts(app) == 1


def test_idempotency_key_with_a_different_body_is_422(
    app: Flask, client: FlaskClient, auth: AuthActions
) -> None:
    headers = {**auth.headers(), "Idempotency-Key": "retry-2"}
    create(client, headers, title="one")
    response = create(client, headers, title="two")
    assert response.status_code == 422
    assert response.json["error"]["code"] == "idempotency_key_reused"
    assert count_posts(app) == 1


def test_idempotency_keys_are_per_user(app: Flask, client: FlaskClient, auth: AuthActions) -> None:
    create(client, {**auth.headers("alice"), "Idempotency-Key": "same"})
    response = create(client, {**auth.headers("bob"), "Idempotency-Key": "same"})
    assert response.status_code == 201
    assert response.json["author"]["username"] == "bob"
    assert count_posts(app) == 2


def test_validation_failure_does_not_burn_the_key(client: FlaskClient, auth: AuthActions) -> None:
    headers = {**auth.headers(), "Idempotency-Key": "k3"}
    assert create(client, headers, title="").status_code == 422
    assert create(client, headers).status_code == 201


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "émoji"])
def test_bad_idempotency_key_is_422(client: FlaskClient, auth: AuthActions, key: str) -> None:
    response = create(client, {**auth.headers(), "Idempotency-Key": key})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["error"]["fields"]


def test_without_a_key_retries_create_twice(
    app: Flask, client: FlaskClient, auth: AuthActions
) -> None:
    headers = auth.headers()
    create(client, headers)
    create(client, headers)
    assert count_posts(app) == 2


def test_expired_idempotency_records_are_pruned(
    app: Flask, client: FlaskClient, auth: AuthActions
) -> None:
    headers = auth.headers()
    create(client, {**headers, "Idempotency-Key": "old"})
    with app.app_context():
        record = db.session.scalar(select(IdempotencyKey))
        record.created_at = utcnow() - timedelta(hours=25)
        db.session.commit()
    create(client, {**headers, "Idempotency-Key": "new"})
    with app.app_context():
        assert list(db.session.scalars(select(IdempotencyKey.key))) == ["new"]
