"""CLI: `flask --app app setup-db` (migrate + seed) and `flask --app app seed`."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from flask_migrate import upgrade
from sqlalchemy import func, select

from .auth import USERNAME, hash_password, password_problem
from .bench import WORLD_ROWS
from .extensions import db
from .models import Fortune, User, World

FORTUNES_FILE = Path(__file__).resolve().parent.parent / "data" / "fortunes.tsv"


def seed_world() -> int:
    """Insert the missing World rows (ids 1..10000); return how many were added."""
    existing = set(db.session.scalars(select(World.id)))
    rows = [
        {"id": i, "random_number": random.randint(1, WORLD_ROWS)}
        for i in range(1, WORLD_ROWS + 1)
        if i not in existing
    ]
    if rows:
        db.session.execute(
            World.__table__.insert(),
            [{"id": r["id"], "randomnumber": r["random_number"]} for r in rows],
        )
    return len(rows)


def seed_fortunes(path: Path = FORTUNES_FILE) -> int:
    """Insert or correct the fortunes from data/fortunes.tsv; return how many changed."""
    with path.open(encoding="utf-8", newline="") as handle:
        wanted = {int(row["id"]): row["message"] for row in csv.DictReader(handle, delimiter="\t")}
    changed = 0
    for fortune_id, message in wanted.items():
        fortune = db.session.get(Fortune, fortune_id)
        if fortune is None:
            db.session.add(Fortune(id=fortune_id, message=message))
        elif fortune.message != message:
            fortune.message = message
        else:
            continue
        changed += 1
    return changed


def seed_admin(username: str | None, password: str | None) -> str:
    """Create the bootstrap admin if configured and missing; never change an existing password."""
    if not username or not password:
        return "skipped (ADMIN_USERNAME/ADMIN_PASSWORD not set)"
    if not USERNAME.fullmatch(username):
        raise click.ClickException("ADMIN_USERNAME must be 3-32 of A-Z a-z 0-9 . _ -")
    if len(password) < 12 or password_problem(password):
        raise click.ClickException("ADMIN_PASSWORD must be 12 characters to 72 bytes")
    user = db.session.scalar(select(User).where(User.username == username.lower()))
    if user is None:
        db.session.add(
            User(username=username.lower(), password_hash=hash_password(password), role="admin")
        )
        return "created"
    if user.role != "admin":
        user.role = "admin"
        return "promoted to admin"
    return "exists"


def seed_all() -> None:
    """Seed the benchmark tables and the bootstrap admin in one transaction."""
    config = current_app.config
    worlds = seed_world()
    fortunes = seed_fortunes()
    admin = seed_admin(config["ADMIN_USERNAME"], config["ADMIN_PASSWORD"])
    db.session.commit()
    total = db.session.scalar(select(func.count()).select_from(World))
    click.echo(f"seed: world +{worlds} ({total} rows), fortunes {fortunes} changed, admin {admin}")


@click.command("seed")
@with_appcontext
def seed_command() -> None:
    """Seed the benchmark tables and the bootstrap admin (idempotent)."""
    seed_all()


@click.command("setup-db")
@with_appcontext
def setup_db_command() -> None:
    """Apply migrations (alembic upgrade head), then seed (idempotent)."""
    upgrade()
    seed_all()


def init_app(app: Flask) -> None:
    """Register the commands."""
    app.cli.add_command(seed_command)
    app.cli.add_command(setup_db_command)
