"""flaskstack.secrets: secret files mounted under /run/secrets reach the app's process as the
environment variables an ordinary Flask app reads, and nothing else is touched."""

from __future__ import annotations

import pytest

from flaskstack import secrets


@pytest.fixture
def run_secrets(tmp_path, monkeypatch):
    root = tmp_path / "run" / "secrets"
    root.mkdir(parents=True)
    monkeypatch.setattr(secrets, "SECRETS_ROOT", f"{root}/")
    return root


def test_each_secret_file_becomes_its_variable(run_secrets):
    (run_secrets / "secret_key").write_text("s3cret\n")
    (run_secrets / "database_url").write_text("postgresql://u:p@db/app")
    environ = {
        "SECRET_KEY_FILE": str(run_secrets / "secret_key"),
        "DATABASE_URL_FILE": str(run_secrets / "database_url"),
    }
    assert sorted(secrets.expand(environ)) == ["DATABASE_URL", "SECRET_KEY"]
    assert environ["SECRET_KEY"] == "s3cret"
    assert environ["DATABASE_URL"] == "postgresql://u:p@db/app"


def test_a_set_variable_wins_and_other_files_are_left_alone(run_secrets, tmp_path):
    (run_secrets / "secret_key").write_text("from the file")
    elsewhere = tmp_path / "upload_list"
    elsewhere.write_text("not a secret")
    environ = {
        "SECRET_KEY": "from the environment",
        "SECRET_KEY_FILE": str(run_secrets / "secret_key"),
        "UPLOAD_LIST_FILE": str(elsewhere),
        "_FILE": str(run_secrets / "secret_key"),
    }
    assert secrets.expand(environ) == []
    assert environ["SECRET_KEY"] == "from the environment"
    assert "UPLOAD_LIST" not in environ


def test_a_missing_secret_file_fails_loudly(run_secrets):
    with pytest.raises(FileNotFoundError):
        secrets.expand({"SECRET_KEY_FILE": str(run_secrets / "absent")})
