"""Postgres unreachable or restarted: 503 JSON, never 500, and recovery without a restart."""

from __future__ import annotations

import io

import pytest

from tests.conftest import AuthActions


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/readyz", {}),
        ("get", "/api/posts", {}),
        ("get", "/api/auth/me", {}),
        ("post", "/api/posts", {"json": {"title": "t", "body": "b"}}),
        (
            "post",
            "/api/uploads",
            {"data": {"file": (io.BytesIO(b"x"), "a.txt")}, "content_type": "multipart/form-data"},
        ),
        ("post", "/api/auth/register", {"json": {"username": "dave", "password": "long-enough"}}),
        ("get", "/bench/queries?queries=3", {}),
        ("get", "/bench/updates?queries=3", {}),
    ],
)
def test_closed_port_is_503(
    app_factory, auth: AuthActions, unreachable_database_url: str, method, path, kwargs
) -> None:
    down = app_factory(DATABASE_URL=unreachable_database_url)
    token = AuthActions(down, down.test_client()).token_for(1)
    response = getattr(down.test_client(), method)(
        path, headers={"Authorization": f"Bearer {token}"}, **kwargs
    )
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_unavailable"
    assert "psycopg2" not in response.get_data(as_text=True)
