"""Request id, served-by, timing, security headers and CORS."""

import socket

import pytest
from flask.testing import FlaskClient


def test_request_id_is_generated(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert len(response.headers["X-Request-ID"]) == 32


def test_sane_request_id_is_honoured(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123.DEF_4"})
    assert response.headers["X-Request-ID"] == "abc-123.DEF_4"


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "<script>", "id\u00e9", "a/b"])
def test_insane_request_id_is_replaced(client: FlaskClient, bad: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": bad})
    assert response.headers["X-Request-ID"] != bad
    assert len(response.headers["X-Request-ID"]) == 32


def test_error_body_carries_the_request_id(client: FlaskClient) -> None:
    response = client.get("/missing", headers={"X-Request-ID": "trace-1"})
    assert response.json["request_id"] == "trace-1"


def test_tracing_and_security_headers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.headers["X-Served-By"] == socket.gethostname()
    assert response.headers["X-Response-Time"].endswith("ms")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_no_cors_headers_without_an_allow_list(client: FlaskClient) -> None:
    response = client.get("/api/posts", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_only_listed_origins(app_factory) -> None:
    client = app_factory(CORS_ORIGINS="https://app.example, https://admin.example").test_client()
    allowed = client.get("/api/posts", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    denied = client.get("/api/posts", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in denied.headers


def test_cors_preflight(app_factory) -> None:
    client = app_factory(CORS_ORIGINS="https://app.example").test_client()
    response = client.options(
        "/api/posts",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers
    assert "idempotency-key" in allowed_headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_defaults_do_not_override_what_a_view_set(app_factory) -> None:
    """A view's own Cache-Control (or any default header) wins, and appears once."""
    app = app_factory()

    @app.get("/cached")
    def cached():
        return "ok", 200, {"Cache-Control": "public, max-age=60", "X-Frame-Options": "SAMEORIGIN"}

    response = app.test_client().get("/cached")
    assert response.headers.getlist("Cache-Control") == ["public, max-age=60"]
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_no_cookie_session_is_kept(app_factory) -> None:
    """The API is stateless: no Set-Cookie ever, and code that writes flask.session fails loudly."""
    from flask import session

    app = app_factory()

    @app.get("/reads-session")
    def reads():
        return {"user": session.get("user")}

    @app.get("/writes-session")
    def writes():
        session["user"] = "someone"
        return "unreachable"

    client = app.test_client()
    response = client.get("/reads-session")
    assert response.json == {"user": None}
    assert "Set-Cookie" not in response.headers
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="no cookie session"):
        client.get("/writes-session")
