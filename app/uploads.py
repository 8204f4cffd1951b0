"""Uploads: multipart `file` saved under a server-chosen name; downloads via X-Accel-Redirect."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import uuid
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from flask_jwt_extended import current_user, jwt_required
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from . import events
from .errors import APIError
from .extensions import db
from .models import Upload

bp = Blueprint("uploads", __name__, url_prefix="/api/uploads")
log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# Types a browser may render inline without risk to this origin; anything else is octet-stream.
SAFE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain", "application/pdf"}
)


def upload_dir() -> Path:
    """Return UPLOAD_DIR, created with mode 0755 if missing."""
    path = Path(current_app.config["UPLOAD_DIR"])
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    return path


def display_name(file: FileStorage) -> str:
    """Return the client's filename made safe for display and Content-Disposition."""
    name = secure_filename(file.filename or "")[-255:]
    return name or "upload"


def content_type_for(name: str) -> str:
    """Guess a content type from the (sanitised) name, allowing only inline-safe types."""
    guessed, _ = mimetypes.guess_type(name, strict=True)
    return guessed if guessed in SAFE_TYPES else "application/octet-stream"


def save_stream(file: FileStorage, target: Path) -> tuple[int, str]:
    """Write the upload to target (mode 0644), returning its size and sha256."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := file.stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    os.chmod(target, 0o644)  # regardless of the process umask
    return size, digest.hexdigest()


@bp.post("")
@jwt_required()
def create_upload() -> tuple[Response, int, dict[str, str]]:
    """Store the multipart field `file` and record its metadata."""
    if request.mimetype != "multipart/form-data":
        raise APIError(415, "Content-Type must be multipart/form-data.")
    file = request.files.get("file")
    if file is None:
        raise APIError(422, "The request has invalid fields.", fields={"file": "required"})
    name = display_name(file)
    stored_name = uuid.uuid4().hex
    target = upload_dir() / stored_name
    try:
        size, sha256 = save_stream(file, target)
        upload = Upload(
            owner_id=current_user.id,
            stored_name=stored_name,
            original_name=name,
            content_type=content_type_for(name),
            size=size,
            sha256=sha256,
        )
        db.session.add(upload)
        db.session.flush()
        # To the uploader's own sockets (every tab and device, on any replica), at commit.
        events.publish(
            {"type": "upload.stored", "upload": upload.to_dict()},
            to=events.user_room(current_user.id),
        )
        db.session.commit()
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return jsonify(upload.to_dict()), 201, {"Location": f"/api/uploads/{upload.id}"}


@bp.get("/<id:upload_id>")
def download(upload_id: int) -> Response:
    """Send the file as an attachment, or hand it to nginx with X-Accel-Redirect."""
    upload = db.session.get(Upload, upload_id)
    if upload is None:
        raise APIError(404, "Upload not found.")
    prefix = current_app.config["UPLOAD_ACCEL_PREFIX"]
    if prefix:
        response = current_app.response_class(b"", mimetype=upload.content_type)
        response.headers["X-Accel-Redirect"] = f"{prefix}{upload.stored_name}"
        response.headers.set("Content-Disposition", "attachment", filename=upload.original_name)
        return response
    path = upload_dir() / upload.stored_name
    if not path.is_file():
        log.warning("upload %s is missing its file %s", upload.id, upload.stored_name)
        raise APIError(404, "Upload not found.")
    return send_file(
        path,
        mimetype=upload.content_type,
        as_attachment=True,
        download_name=upload.original_name,
        max_age=0,
    )
