"""Register, login, me, tokens and the admin guard."""

import base64
import json
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.auth import list_users
from app.extensions import db
from app.models import User
from tests.conftest import PASSWORD, AuthActions


def test_register_returns_the_user(client: FlaskClient) -> None:
    response = client.post("/api/auth/register", json={"username": "Alice", "password": PASSWORD})
    assert response.status_code == 201
    assert response.json["username"] == "alice"
    assert response.json["role"] == "user"
    assert "password" not in response.get_data(as_text=True)


def test_password_is_stored_as_bcrypt_hash(app: Flask, auth: AuthActions) -> None:
    auth.register()
    with app.app_context():
        stored = db.session.scalar(select(User.password_hash))
    assert stored.startswith("$2b$04$")  # testing cost; production defaults to 12
    assert PASSWORD not in stored


def test_duplicate_username_is_409_case_insensitive(client: FlaskClient, auth: AuthActions) -> None:
    auth.register("alice")
    response = client.post("/api/auth/register", json={"username": "ALICE", "password": PASSWORD})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "username_taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "al", "password": PASSWORD}, "username"),
        ({"username": "a" * 33, "password": PASSWORD}, "username"),
        ({"username": "bad name", "password": PASSWORD}, "username"),
        ({"username": "alice", "password": "short"}, "password"),
        ({"username": "alice", "password": "\u00e9" * 37}, "password"),  # 74 bytes, 37 chars
        ({"username": "alice", "password": "x" * 73}, "password"),
        ({"username": "alice"}, "password"),
        ({"username": "alice", "password": PASSWORD, "role": "admin"}, "role"),
        ({"username": 5, "password": PASSWORD}, "username"),
    ],
)
def test_register_validation(client: FlaskClient, body: dict, field: str) -> None:
    response = client.post("/api/auth/register", json=body)
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]


def test_login_returns_a_bearer_token(client: FlaskClient, auth: AuthActions) -> None:
    auth.register()
    response = client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json["token_type"] == "Bearer"
    assert response.json["expires_in"] == 15 * 60
    payload = response.json["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "1"
    assert claims["role"] == "user"


@pytest.mark.parametrize(
    ("username", "password"), [("alice", "wrong-password"), ("nobody", PASSWORD)]
)
def test_bad_credentials_are_401(
    client: FlaskClient, auth: AuthActions, username, password
) -> None:
    auth.register()
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "invalid_credentials"


def test_me(client: FlaskClient, auth: AuthActions) -> None:
    response = client.get("/api/auth/me", headers=auth.headers())
    assert response.status_code == 200
    assert response.json["username"] == "alice"


def test_me_without_token_is_401(client: FlaskClient) -> None:
    response = client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def _forge(header: dict, claims: dict, signature: str = "") -> str:
    """Build a JWT from parts without a valid signature."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{signature}"


def test_bad_tokens_are_401(client: FlaskClient, auth: AuthActions) -> None:
    good = auth.headers()["Authorization"].removeprefix("Bearer ")
    head, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    cases = {
        "tampered": _forge({"alg": "HS256", "typ": "JWT"}, {**claims, "role": "admin"}, signature),
        "alg_none": _forge({"alg": "none", "typ": "JWT"}, {**claims, "role": "admin"}),
        "garbage": "not.a.token",
        "truncated": f"{head}.{body}",
    }
    for name, token in cases.items():
        response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert response.json["error"]["code"] == "invalid_token", name


def test_expired_token_is_401(client: FlaskClient, auth: AuthActions) -> None:
    user = auth.register()
    token = auth.token_for(user["id"], expires=timedelta(seconds=-5))
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "token_expired"


def test_token_of_a_deleted_user_is_401(app: Flask, client: FlaskClient, auth: AuthActions) -> None:
    headers = auth.headers()
    with app.app_context():
        db.session.delete(db.session.scalar(select(User)))
        db.session.commit()
    assert client.get("/api/auth/me", headers=headers).status_code == 401


def test_token_from_another_key_is_401(app_factory, client: FlaskClient, auth: AuthActions) -> None:
    user = auth.register()
    other = AuthActions(app_factory(JWT_SECRET_KEY="another-key-" + "z" * 40), client)
    token = other.token_for(user["id"])
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_admin_only_forbids_plain_users(client: FlaskClient, auth: AuthActions) -> None:
    response = client.get("/api/admin/users", headers=auth.headers())
    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"


def test_admin_only_needs_a_token(client: FlaskClient) -> None:
    assert client.get("/api/admin/users").status_code == 401


def test_admin_lists_users(client: FlaskClient, auth: AuthActions) -> None:
    auth.register("bob")
    response = client.get("/api/admin/users", headers=auth.headers("root", role="admin"))
    assert response.status_code == 200
    assert {u["username"] for u in response.json["items"]} == {"bob", "root"}
    assert response.json["total"] == 2


def test_admin_only_keeps_the_view_name() -> None:
    assert list_users.__name__ == "list_users"
    assert list_users.__doc__.startswith("List all users")
