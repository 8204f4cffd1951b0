"""Echo shows what the server parsed; credentials are not echoed; the client IP is REMOTE_ADDR."""

import io

from flask.testing import FlaskClient


def test_echo_get(client: FlaskClient) -> None:
    response = client.get("/api/echo?a=1&a=2&b=%C3%A9", headers={"User-Agent": "test-agent"})
    body = response.json
    assert body["method"] == "GET"
    assert body["path"] == "/api/echo"
    assert body["args"] == {"a": ["1", "2"], "b": ["\u00e9"]}
    assert body["query_string"] == "a=1&a=2&b=%C3%A9"
    assert body["headers"]["User-Agent"] == "test-agent"
    assert body["json"] is None


def test_echo_json(client: FlaskClient) -> None:
    assert client.post("/api/echo", json={"x": [1, 2]}).json["json"] == {"x": [1, 2]}


def test_echo_tolerates_broken_json(client: FlaskClient) -> None:
    response = client.post("/api/echo", data="{nope", content_type="application/json")
    assert response.status_code == 200
    assert response.json["json"] is None


def test_echo_form_and_files(client: FlaskClient) -> None:
    response = client.post(
        "/api/echo",
        data={"name": "x", "upload": (io.BytesIO(b"data"), "../evil name.txt")},
        content_type="multipart/form-data",
    )
    body = response.json
    assert body["form"] == {"name": ["x"]}
    assert body["files"][0]["field"] == "upload"
    assert body["files"][0]["safe_filename"] == "evil_name.txt"


def test_echo_hides_credentials(client: FlaskClient) -> None:
    headers = {"Authorization": "Bearer secret", "Cookie": "session=secret"}
    response = client.get("/api/echo", headers=headers)
    assert "secret" not in response.get_data(as_text=True)


def test_client_ip_ignores_x_forwarded_for(client: FlaskClient) -> None:
    response = client.get(
        "/api/echo",
        headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert response.json["client_ip"] == "10.1.2.3"
    assert response.json["headers"]["X-Forwarded-For"] == "6.6.6.6"
