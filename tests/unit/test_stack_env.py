"""`make env` writes COMPOSE_FILE, COMPOSE_PROFILES and COMPOSE_PROJECT_NAME from the env file's
own settings, so plain `docker compose` starts the stack `make up` starts; a one-off setting in
the shell (`make up MONITORING=1`) or Swarm's rendering never changes them."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.support import ROOT, STACK


def stack_sh(env_file, *args: str, **shell: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for name in ("MONITORING", "BASELINE", "TLS_ENABLED", "DATABASE_URL", "SWARM", "DEV"):
        env.pop(name, None)
    env.update(PROJECT="demo", ENV_FILE=str(env_file))
    env.update(shell)
    result = subprocess.run(
        [str(STACK), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def written(env_file) -> dict[str, str]:
    lines = env_file.read_text().splitlines()
    names = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES")
    return {k: v for k, _, v in (line.partition("=") for line in lines) if k in names}


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "stack.env"
    stack_sh(path, "env")
    return path


def set_setting(env_file, name: str, value: str) -> None:
    lines = env_file.read_text().splitlines()
    new = [f"{name}={value}" if line.startswith(f"{name}=") else line for line in lines]
    env_file.write_text("\n".join(new) + "\n")


def test_a_fresh_env_names_the_base_file_and_no_profile(env_file):
    assert written(env_file) == {
        "COMPOSE_PROJECT_NAME": "demo",
        "COMPOSE_FILE": "docker-compose.yml",
        "COMPOSE_PROFILES": "",
    }


def settings(env_file) -> dict[str, str]:
    lines = env_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")


def test_the_secrets_are_files_beside_the_env_file_readable_only_through_it(env_file):
    values = settings(env_file)
    folder = env_file.parent / "stack.env.secrets"
    assert values["SECRETS_DIR"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name, key in [
        ("secret_key", "SECRET_KEY"),
        ("jwt_secret_key", "JWT_SECRET_KEY"),
        ("admin_password", "ADMIN_PASSWORD"),
        ("postgres_password", "POSTGRES_PASSWORD"),
        ("postgres_monitor_password", "POSTGRES_MONITOR_PASSWORD"),
    ]:
        assert len(values[key]) >= 32
        assert (folder / name).read_text() == values[key]
    bundled = f"postgresql+psycopg2://app:{values['POSTGRES_PASSWORD']}@postgres:5432/app"
    assert (folder / "database_url").read_text() == bundled
    set_setting(env_file, "DATABASE_URL", "postgresql://u:p@db.example.com/app")
    stack_sh(env_file, "env")
    assert (folder / "database_url").read_text() == "postgresql://u:p@db.example.com/app"


def test_settings_choose_the_overlays_and_profiles(env_file):
    set_setting(env_file, "MONITORING", "1")
    set_setting(env_file, "BACKUP_SCHEDULE", "1")
    set_setting(env_file, "TLS_ENABLED", "1")
    set_setting(env_file, "DATABASE_URL", "postgresql://u:p@db.example.com/app")
    stack_sh(env_file, "env")
    assert written(env_file)["COMPOSE_FILE"] == (
        "docker-compose.yml:deploy/compose/external-db.yml:deploy/compose/tls.yml"
    )
    assert written(env_file)["COMPOSE_PROFILES"] == "monitoring,backup"
    assert env_file.read_text().count("COMPOSE_FILE=") == 1


def test_one_off_shell_settings_and_swarm_leave_the_env_file_alone(env_file):
    before = env_file.read_text()
    assert stack_sh(env_file, "profiles", MONITORING="1", BASELINE="1").strip() == (
        "monitoring,baseline"
    )
    stack_sh(env_file, "compose", "version", MONITORING="1", BASELINE="1")
    assert env_file.read_text() == before
    stack_sh(env_file, "compose", "version", SWARM="1", PROJECT="other")
    assert env_file.read_text() == before
