"""Echo: what the server saw (args, form, JSON, files, headers, client IP)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.utils import secure_filename

from .validation import parse_json

bp = Blueprint("echo", __name__, url_prefix="/api")

# Never echo credentials (Authorization, Cookie) back.
ECHOED_HEADERS = (
    "Host",
    "User-Agent",
    "Accept",
    "Accept-Language",
    "Content-Type",
    "Content-Length",
    "Origin",
    "Referer",
    "X-Request-ID",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Real-IP",
)


def tolerant_json() -> Any:
    """Return the JSON body if the request declares JSON and it parses, else None."""
    if not request.is_json:
        return None
    try:
        return parse_json(request.get_data(cache=True))
    except ValueError:
        return None


def string_keys(data: dict[Any, Any]) -> dict[str, Any]:
    """Return data with str keys (a nameless multipart part has the key None)."""
    return {str(key): value for key, value in data.items()}


@bp.route("/echo", methods=["GET", "POST"])
def echo() -> Response:
    """Describe the request; client_ip is REMOTE_ADDR as set by the one trusted proxy layer."""
    files = [
        {
            "field": str(field),
            "filename": storage.filename,
            "safe_filename": secure_filename(storage.filename or ""),
            "content_type": storage.mimetype,
        }
        for field, storage in request.files.items(multi=True)
    ]
    return jsonify(
        method=request.method,
        path=request.path,
        args=string_keys(request.args.to_dict(flat=False)),
        query_string=request.query_string.decode("utf-8", "replace"),
        form=string_keys(request.form.to_dict(flat=False)),
        json=tolerant_json(),
        headers={name: request.headers[name] for name in ECHOED_HEADERS if name in request.headers},
        client_ip=request.remote_addr,
        scheme=request.scheme,
        files=files,
    )
