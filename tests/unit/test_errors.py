"""Every error is the JSON envelope; exception text never leaks; a dead database is a 503."""

import logging
import threading

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from app.extensions import db


def assert_envelope(response, status: int, code: str | None = None) -> dict:
    """Check the error envelope and return its error object."""
    assert response.status_code == status
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert error["status"] == status
    assert response.json["request_id"] == response.headers["X-Request-ID"]
    if code:
        assert error["code"] == code
    return error


def test_404_is_json(client: FlaskClient) -> None:
    assert_envelope(client.get("/no/such/page"), 404, "not_found")


def test_405_is_json_with_allow(client: FlaskClient) -> None:
    response = client.put("/api/posts")
    assert_envelope(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
    assert "POST" in response.headers["Allow"]


def test_huge_path_id_is_404_not_overflow(client: FlaskClient, auth) -> None:
    assert_envelope(client.get("/api/posts/99999999999999999999999"), 404)
    assert_envelope(client.get("/api/posts/0"), 404)
    assert_envelope(client.get("/api/uploads/-1"), 404)
    headers = auth.headers()
    assert_envelope(client.patch("/api/posts/0", json={"title": "x"}, headers=headers), 404)
    assert_envelope(client.delete("/api/posts/99999999999", headers=headers), 404)


def test_oversized_json_is_413(client: FlaskClient, auth) -> None:
    headers = auth.headers()
    response = client.post("/api/posts", json={"title": "t", "body": "x" * 70_000}, headers=headers)
    assert_envelope(response, 413, "payload_too_large")


def test_unexpected_exception_is_a_json_500_without_its_text(app_factory, caplog) -> None:
    app = app_factory(PROPAGATE_EXCEPTIONS=False)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    error = assert_envelope(response, 500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    assert error["message"] == "Internal Server Error."
    assert any("secret internals" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/readyz"),
        ("get", "/api/posts"),
        ("get", "/api/posts/1"),
        ("get", "/bench/db"),
        ("get", "/bench/fortunes"),
    ],
)
def test_database_down_is_503(app_factory, unreachable_database_url: str, method, path) -> None:
    client = app_factory(DATABASE_URL=unreachable_database_url).test_client()
    response = getattr(client, method)(path)
    assert_envelope(response, 503)
    assert response.json["error"]["code"] == "database_unavailable"


def test_login_with_database_down_is_503(app_factory, unreachable_database_url: str) -> None:
    client = app_factory(DATABASE_URL=unreachable_database_url).test_client()
    response = client.post("/api/auth/login", json={"username": "alice", "password": "whatever1"})
    assert_envelope(response, 503, "database_unavailable")


def pool_timeouts() -> float:
    """The replica's count of 503s from an exhausted pool, as /metrics shows it."""
    return REGISTRY.get_sample_value("flaskstack_db_unavailable_total", {"reason": "pool_timeout"})


def test_pool_starvation_is_503_and_counted(app_factory) -> None:
    app = app_factory(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=1)
    release = threading.Event()
    held = threading.Event()

    def hold_the_only_connection() -> None:
        with app.app_context(), db.engine.connect():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert held.wait(5)
        timeouts = pool_timeouts() or 0.0
        response = app.test_client().get("/api/posts")
    finally:
        release.set()
        holder.join()
    assert_envelope(response, 503, "database_unavailable")
    assert pool_timeouts() == timeouts + 1
    assert app.test_client().get("/api/posts").status_code == 200


def test_connection_lost_at_teardown_keeps_the_built_response(
    app, client: FlaskClient, monkeypatch, caplog
) -> None:
    """Postgres closing the connection after the view ran must not turn a 200 into a 500."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    real_close = Session.close
    calls: list[int] = []

    def close_on_a_dead_connection(session: Session) -> None:
        calls.append(1)
        if len(calls) == 1:  # the rollback in remove() meets a closed connection
            raise OperationalError("ROLLBACK", {}, Exception("server closed the connection"))
        real_close(session)

    monkeypatch.setattr(Session, "close", close_on_a_dead_connection)
    response = client.get("/api/posts")
    assert response.status_code == 200
    assert calls  # the teardown really met the failure
    assert "database connection lost" in caplog.text
