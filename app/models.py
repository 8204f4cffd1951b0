"""Database models (SQLAlchemy 2 typed mappings)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db

ROLES = ("user", "admin")


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def isoformat(value: datetime) -> str:
    """Format a timestamp as ISO 8601 UTC (SQLite returns naive datetimes)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class User(db.Model):
    """An account; the password is stored only as a bcrypt hash."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('user', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Return the public representation (never the hash)."""
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "created_at": isoformat(self.created_at),
        }


class Post(db.Model):
    """A post written by a user."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    author: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the public representation."""
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "author": {"id": self.author.id, "username": self.author.username},
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


class Upload(db.Model):
    """Metadata of an uploaded file; the bytes live in UPLOAD_DIR under stored_name."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    stored_name: Mapped[str] = mapped_column(String(32), unique=True)
    original_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Return the public representation."""
        return {
            "id": self.id,
            "filename": self.original_name,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "url": f"/api/uploads/{self.id}",
            "created_at": isoformat(self.created_at),
        }


class IdempotencyKey(db.Model):
    """The stored outcome of a POST made with an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class World(db.Model):
    """TechEmpower benchmark row."""

    __tablename__ = "world"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    random_number: Mapped[int] = mapped_column("randomnumber")

    def to_dict(self) -> dict[str, int]:
        """Return the TechEmpower JSON shape."""
        return {"id": self.id, "randomNumber": self.random_number}


class Fortune(db.Model):
    """TechEmpower fortune cookie message."""

    __tablename__ = "fortune"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    message: Mapped[str] = mapped_column(String(2048))
