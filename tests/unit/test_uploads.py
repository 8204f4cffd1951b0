"""Uploads: server-chosen names, metadata, limits, downloads and X-Accel-Redirect."""

import hashlib
import io
import stat
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.datastructures import FileStorage
from werkzeug.http import parse_options_header
from werkzeug.test import encode_multipart

from app.extensions import db
from app.models import Upload
from tests.conftest import AuthActions

CONTENT = b"hello upload\n" * 10


def disposition(response) -> tuple[str, dict[str, str]]:
    """Parse the Content-Disposition header."""
    return parse_options_header(response.headers["Content-Disposition"])


def upload(client: FlaskClient, headers: dict, name: str = "notes.txt", content: bytes = CONTENT):
    """POST a multipart upload."""
    return client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(content), name)},
        headers=headers,
        content_type="multipart/form-data",
    )


def test_upload_records_metadata(app: Flask, client: FlaskClient, auth: AuthActions) -> None:
    response = upload(client, auth.headers())
    assert response.status_code == 201
    body = response.json
    assert body["filename"] == "notes.txt"
    assert body["size"] == len(CONTENT)
    assert body["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert body["url"] == f"/api/uploads/{body['id']}"
    assert body["content_type"] == "text/plain"
    with app.app_context():
        stored = db.session.scalar(select(Upload.stored_name))
    path = Path(app.config["UPLOAD_DIR"]) / stored
    assert len(stored) == 32 and stored.isalnum()
    assert path.read_bytes() == CONTENT
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_path_tricks_only_change_the_display_name(
    app: Flask, client: FlaskClient, auth: AuthActions, tmp_path: Path
) -> None:
    response = upload(client, auth.headers(), name="../../../etc/passwd")
    assert response.status_code == 201
    assert response.json["filename"] == "etc_passwd"
    assert [p.parent for p in Path(app.config["UPLOAD_DIR"]).iterdir()] == [
        Path(app.config["UPLOAD_DIR"])
    ]
    assert not (tmp_path / "etc").exists()


def test_html_is_never_served_as_html(client: FlaskClient, auth: AuthActions) -> None:
    created = upload(client, auth.headers(), name="x.html", content=b"<script>1</script>").json
    assert created["content_type"] == "application/octet-stream"
    response = client.get(created["url"])
    response.close()
    assert response.mimetype == "application/octet-stream"
    assert disposition(response)[0] == "attachment"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_download_sends_the_bytes(client: FlaskClient, auth: AuthActions) -> None:
    created = upload(client, auth.headers()).json
    response = client.get(created["url"])
    assert response.status_code == 200
    assert response.data == CONTENT
    assert disposition(response) == ("attachment", {"filename": "notes.txt"})
    response.close()


def test_download_via_x_accel_redirect(app_factory, auth: AuthActions, client: FlaskClient) -> None:
    created = upload(client, auth.headers()).json
    accel = app_factory(UPLOAD_ACCEL_PREFIX="/_uploads/").test_client()
    response = accel.get(created["url"])
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["X-Accel-Redirect"].startswith("/_uploads/")
    assert len(response.headers["X-Accel-Redirect"].removeprefix("/_uploads/")) == 32
    assert response.mimetype == "text/plain"
    assert disposition(response) == ("attachment", {"filename": "notes.txt"})


def test_too_large_is_413_json(client: FlaskClient, auth: AuthActions) -> None:
    # Encoded in memory: the test client's own temp file for big bodies is never closed.
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(b"x" * 2**20), "big.bin")})
    response = client.post(
        "/api/uploads",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=auth.headers(),
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"


def test_missing_file_field_is_422(client: FlaskClient, auth: AuthActions) -> None:
    response = client.post(
        "/api/uploads",
        data={"other": "x"},
        headers=auth.headers(),
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"file": "required"}


def test_not_multipart_is_415(client: FlaskClient, auth: AuthActions) -> None:
    response = client.post("/api/uploads", json={"file": "x"}, headers=auth.headers())
    assert response.status_code == 415


def test_upload_needs_a_token(client: FlaskClient) -> None:
    response = client.post(
        "/api/uploads",
        data={"file": (io.BytesIO(b"x"), "a.txt")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 401


def test_unknown_upload_is_404(client: FlaskClient) -> None:
    assert client.get("/api/uploads/999").status_code == 404
