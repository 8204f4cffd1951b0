from datetime import UTC, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from werkzeug.security import check_password_hash, generate_password_hash

from app import db


class User(db.Model):
    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(64), index=True, unique=True)
    password_hash: so.Mapped[str | None] = so.mapped_column(sa.String(256))

    notes: so.WriteOnlyMapped["Note"] = so.relationship(back_populates="author")

    def __repr__(self):
        return f"<User {self.username}>"

    def set_password(self, password):
        self.password_hash = generate_password_hash(password)

    def check_password(self, password):
        return self.password_hash is not None and check_password_hash(self.password_hash, password)


class Note(db.Model):
    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    body: so.Mapped[str] = so.mapped_column(sa.String(280))
    created_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), index=True, default=lambda: datetime.now(UTC)
    )
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)

    author: so.Mapped[User] = so.relationship(back_populates="notes")

    def __repr__(self):
        return f"<Note {self.body}>"

    def to_dict(self):
        created_at = self.created_at
        if created_at.tzinfo is None:  # SQLite and a naive timestamp column drop the UTC offset
            created_at = created_at.replace(tzinfo=UTC)
        return {
            "id": self.id,
            "body": self.body,
            "author": self.author.username,
            "created_at": created_at.isoformat(),
        }
