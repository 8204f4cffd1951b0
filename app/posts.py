"""Posts: list with paging and search, create (idempotent with Idempotency-Key), edit, delete."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask_jwt_extended import current_user, get_current_user, jwt_required
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from . import events
from .errors import APIError
from .extensions import db
from .models import IdempotencyKey, Post, isoformat, utcnow
from .validation import Field, int_arg, json_body, text_arg

bp = Blueprint("posts", __name__, url_prefix="/api/posts")

POST_FIELDS = {
    "title": Field(str, max_length=200),
    "body": Field(str, max_length=10_000),
}
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
MAX_OFFSET = 1_000_000
IDEMPOTENCY_TTL = timedelta(hours=24)  # retries come within minutes; Stripe keeps keys 24 h


def like_pattern(text: str) -> str:
    """Return a LIKE pattern matching text literally anywhere (wildcards escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def get_post(post_id: int) -> Post:
    """Return the post or raise 404."""
    post = db.session.get(Post, post_id)
    if post is None:
        raise APIError(404, "Post not found.")
    return post


def get_own_post(post_id: int) -> Post:
    """Return the post if the caller owns it or is an admin; else 404 or 403."""
    post = get_post(post_id)
    if post.author_id != current_user.id and current_user.role != "admin":
        raise APIError(403, "Only the author or an admin may change this post.")
    return post


def json_response(text: str, status: int, post_id: int, replayed: bool = False) -> Response:
    """Return a pre-serialised JSON response for a created post."""
    response = current_app.response_class(text, status=status, mimetype="application/json")
    response.headers["Location"] = f"/api/posts/{post_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("")
def list_posts() -> Response:
    """List posts, newest first; `q` searches title and body."""
    limit = int_arg("limit", 20, 1, 100)
    offset = int_arg("offset", 0, 0, MAX_OFFSET)
    query = text_arg("q", 200)
    where = []
    if query:
        pattern = like_pattern(query)
        where.append(
            or_(Post.title.ilike(pattern, escape="\\"), Post.body.ilike(pattern, escape="\\"))
        )
    posts = db.session.scalars(
        select(Post).where(*where).order_by(Post.id.desc()).limit(limit).offset(offset)
    )
    total = db.session.scalar(select(func.count()).select_from(Post).where(*where))
    return jsonify(items=[p.to_dict() for p in posts], total=total, limit=limit, offset=offset)


@bp.post("")
@jwt_required()
def create_post() -> Response:
    """Create a post; a retry with the same Idempotency-Key replays the first result."""
    data = json_body(POST_FIELDS)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        post = insert_post(data)
        # Serialise before commit: commit expires the row, and reloading it would need the
        # database again after the write is already durable.
        text, post_id = json.dumps(post.to_dict()), post.id
        db.session.commit()
        return json_response(text, 201, post_id)
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise APIError(
            422,
            "Invalid Idempotency-Key header.",
            fields={"Idempotency-Key": "must be 1-255 of A-Z a-z 0-9 _ . : -"},
        )
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if (replay := replay_idempotent(key, fingerprint)) is not None:
        return replay
    record = IdempotencyKey(user_id=current_user.id, key=key, request_hash=fingerprint)
    db.session.add(record)
    try:
        # The unique (user_id, key) row is inserted first: a concurrent duplicate waits on it here.
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        if (replay := replay_idempotent(key, fingerprint)) is not None:
            return replay
        raise APIError(409, "A request with this Idempotency-Key is in progress.") from None
    prune_expired_keys()
    post = insert_post(data)
    text, post_id = json.dumps(post.to_dict()), post.id
    record.status_code, record.response_body = 201, text
    db.session.commit()
    return json_response(text, 201, post_id)


def insert_post(data: dict[str, Any]) -> Post:
    """Add a post in the current transaction and announce it (delivered at commit)."""
    post = Post(author=get_current_user(), title=data["title"], body=data["body"])
    db.session.add(post)
    db.session.flush()
    events.publish(
        {
            "type": "post.created",
            "post": {
                "id": post.id,
                "title": post.title,
                "author": {"id": current_user.id, "username": current_user.username},
                "created_at": isoformat(post.created_at),
                "url": f"/api/posts/{post.id}",
            },
        }
    )
    return post


def prune_expired_keys() -> None:
    """Delete the caller's idempotency records older than the retention window."""
    cutoff = utcnow() - IDEMPOTENCY_TTL
    db.session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.user_id == current_user.id, IdempotencyKey.created_at < cutoff
        )
    )


def replay_idempotent(key: str, fingerprint: str) -> Response | None:
    """Return the stored response for this user's key, 422 if the body differs, or None."""
    record = db.session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.user_id == current_user.id, IdempotencyKey.key == key
        )
    )
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise APIError(
            422,
            "This Idempotency-Key was already used with a different request body.",
            "idempotency_key_reused",
        )
    if record.response_body is None or record.status_code is None:
        raise APIError(409, "A request with this Idempotency-Key is in progress.")
    post_id = json.loads(record.response_body)["id"]
    return json_response(record.response_body, record.status_code, post_id, replayed=True)


@bp.get("/<id:post_id>")
def show_post(post_id: int) -> Response:
    """Show one post."""
    return jsonify(get_post(post_id).to_dict())


@bp.patch("/<id:post_id>")
@jwt_required()
def update_post(post_id: int) -> Response:
    """Change a post's title and/or body (author or admin)."""
    post = get_own_post(post_id)
    data = json_body(POST_FIELDS, partial=True)
    if not data:
        raise APIError(422, "Send at least one of title, body.", fields={"title": "required"})
    for name, value in data.items():
        setattr(post, name, value)
    db.session.commit()
    return jsonify(post.to_dict())


@bp.delete("/<id:post_id>")
@jwt_required()
def delete_post(post_id: int) -> Response:
    """Delete a post (author or admin)."""
    db.session.delete(get_own_post(post_id))
    db.session.commit()
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]
    return response
