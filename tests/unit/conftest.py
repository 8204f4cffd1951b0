"""Unit tests run on SQLite: each test gets a copy of a template file built by the migrations."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flask_migrate import upgrade

from app.cli import seed_fortunes, seed_world
from app.extensions import db
from tests.conftest import dispose, make_app
from tests.hostproc import host_factory  # noqa: F401 (a fixture for the tests here)
from tests.support import ROOT


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build one migrated, seeded SQLite database for the session."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    app = make_app(f"sqlite:///{path}")
    with app.app_context():
        upgrade()
        seed_world()
        seed_fortunes()
        db.session.commit()
    dispose(app)
    return path


@pytest.fixture
def database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """Give the test its own copy of the template database."""
    path = tmp_path / "app.sqlite"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def unreachable_database_url(tmp_path: Path) -> str:
    """A database that cannot be opened (its directory does not exist)."""
    return f"sqlite:///{tmp_path / 'missing-dir' / 'app.sqlite'}"


@pytest.fixture
def sqlite_host(host_factory, tmp_path):  # noqa: F811 (the fixture imported above)
    """The demo app on SQLite under the host: no Postgres, so events come from its own bus."""
    env = {
        "APP_ENV": "development",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "setup-db"],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return host_factory(**env)
