"""Accounts and tokens: register, login, me, the admin user list, and the admin_only guard."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import bcrypt
from flask import Blueprint, Response, current_app, jsonify
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    current_user,
    jwt_required,
    verify_jwt_in_request,
)
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .errors import APIError, error_response
from .extensions import db
from .models import User
from .validation import Field, int_arg, json_body

bp = Blueprint("auth", __name__, url_prefix="/api")

USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
PASSWORD_MAX_BYTES = 72  # bcrypt ignores (bcrypt>=5: refuses) anything past 72 bytes
CREDENTIALS = {
    "username": Field(
        str, min_length=3, max_length=32, pattern=USERNAME, hint="3-32 of A-Z a-z 0-9 . _ -"
    ),
    "password": Field(str, min_length=8, max_length=PASSWORD_MAX_BYTES),
}
LOGIN = {
    "username": Field(str, max_length=32),
    "password": Field(str, max_length=PASSWORD_MAX_BYTES),
}
P = ParamSpec("P")
R = TypeVar("R")


def hash_password(password: str) -> str:
    """Hash a password with bcrypt at the configured cost."""
    salt = bcrypt.gensalt(rounds=current_app.config["BCRYPT_ROUNDS"])
    return bcrypt.hashpw(password.encode("utf-8"), salt).decode("ascii")


def check_password(password: str, password_hash: str | None) -> bool:
    """Check a password; without a hash, spend the same time and fail."""
    candidate = (password_hash or _dummy_hash(current_app.config["BCRYPT_ROUNDS"])).encode("ascii")
    return bcrypt.checkpw(password.encode("utf-8"), candidate) and password_hash is not None


@functools.cache
def _dummy_hash(rounds: int) -> str:
    """Return a throwaway hash so unknown usernames cost as much as known ones."""
    return bcrypt.hashpw(b"dummy-password", bcrypt.gensalt(rounds=rounds)).decode("ascii")


def password_problem(password: str) -> str | None:
    """Return why a password is unacceptable, or None; over 72 bytes is refused, not truncated."""
    if len(password.encode("utf-8")) > PASSWORD_MAX_BYTES:
        return f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8"
    return None


def credentials(schema: dict[str, Field]) -> tuple[str, str]:
    """Read and validate {username, password}; usernames are case-insensitive."""
    data = json_body(schema)
    if problem := password_problem(data["password"]):
        raise APIError(422, "The request has invalid fields.", fields={"password": problem})
    return data["username"].lower(), data["password"]


def admin_only(view: Callable[P, R]) -> Callable[P, R]:
    """Require a valid token whose user is an admin: 401 without a token, 403 for others."""

    @functools.wraps(view)  # keeps the endpoint name unique (the tutorial's overwrite pitfall)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        verify_jwt_in_request()
        if current_user.role != "admin":
            raise APIError(403, "This operation requires the admin role.")
        return view(*args, **kwargs)

    return wrapper


def init_jwt(jwt: JWTManager) -> None:
    """Load the user behind each token and answer every token problem with a 401 envelope."""

    @jwt.user_lookup_loader
    def load_user(_header: dict[str, Any], data: dict[str, Any]) -> User | None:
        """Return the token's user, or None when it no longer exists."""
        subject = data.get("sub")
        if not isinstance(subject, str) or not subject.isdigit() or len(subject) > 9:
            return None
        return db.session.get(User, int(subject))

    def unauthorized(message: str, code: str = "unauthorized") -> Response:
        """Return the 401 envelope."""
        return error_response(401, message, code)

    jwt.unauthorized_loader(lambda _reason: unauthorized("Missing bearer token."))
    jwt.invalid_token_loader(lambda _reason: unauthorized("Invalid token.", "invalid_token"))
    jwt.expired_token_loader(lambda _h, _d: unauthorized("Token has expired.", "token_expired"))
    jwt.revoked_token_loader(
        lambda _h, _d: unauthorized("Token has been revoked.", "invalid_token")
    )
    jwt.needs_fresh_token_loader(lambda _h, _d: unauthorized("Fresh token required."))
    jwt.user_lookup_error_loader(lambda _h, _d: unauthorized("Unknown user.", "invalid_token"))
    jwt.token_verification_failed_loader(
        lambda _h, _d: unauthorized("Invalid token.", "invalid_token")
    )


@bp.post("/auth/register")
def register() -> tuple[Response, int]:
    """Create a user account."""
    username, password = credentials(CREDENTIALS)
    if db.session.scalar(select(User.id).where(User.username == username)) is not None:
        raise APIError(409, "That username is taken.", "username_taken")
    user = User(username=username, password_hash=hash_password(password), role="user")
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent registration won the race
        db.session.rollback()
        raise APIError(409, "That username is taken.", "username_taken") from None
    return jsonify(user.to_dict()), 201


@bp.post("/auth/login")
def login() -> Response:
    """Exchange a username and password for a bearer token."""
    username, password = credentials(LOGIN)
    user = db.session.scalar(select(User).where(User.username == username))
    if not check_password(password, user.password_hash if user else None) or user is None:
        raise APIError(401, "Invalid username or password.", "invalid_credentials")
    # String subject (PyJWT >= 2.10 requires it); the role claim is for clients: the server
    # re-reads the role from the database on every admin request (see admin_only).
    token = create_access_token(identity=str(user.id), additional_claims={"role": user.role})
    expires_in = int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds())
    return jsonify(access_token=token, token_type="Bearer", expires_in=expires_in)  # noqa: S106


@bp.get("/auth/me")
@jwt_required()
def me() -> Response:
    """Show the caller."""
    return jsonify(current_user.to_dict())


@bp.get("/admin/users")
@admin_only
def list_users() -> Response:
    """List all users (admin only)."""
    limit = int_arg("limit", 50, 1, 100)
    offset = int_arg("offset", 0, 0, 1_000_000)
    users = db.session.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
    total = db.session.scalar(select(func.count()).select_from(User))
    return jsonify(items=[u.to_dict() for u in users], total=total, limit=limit, offset=offset)
