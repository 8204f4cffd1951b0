"""The one-shot migration's first step: wait for the database DATABASE_URL names, whichever it
is, and run MIGRATE_COMMAND only once it answers (flaskstack.migrate)."""

from __future__ import annotations

import pytest

from flaskstack import migrate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Conn:
    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg2://u:p%40ss@db:5432/app?sslmode=require",
         "postgresql://u:p%40ss@db:5432/app?sslmode=require"),
        ("postgres://u:p@db/app", "postgresql://u:p@db/app"),
        ("postgresql://u:p@db/app", "postgresql://u:p@db/app"),
        ("sqlite:////data/app.db", None),
        ("", None),
    ],
)  # fmt: skip
def test_libpq_url_drops_the_driver_name_and_ignores_other_databases(url, expected):
    assert migrate.libpq_url(url) == expected


def test_database_url_reads_the_secret_file_when_the_variable_is_unset(tmp_path):
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://u:p@db/app\n")
    assert migrate.database_url({"DATABASE_URL_FILE": str(secret)}) == "postgresql://u:p@db/app"
    assert migrate.database_url({"DATABASE_URL": "postgresql://x@y/z"}) == "postgresql://x@y/z"


def test_wait_retries_until_the_database_answers_and_names_where_never_the_password():
    clock, said, attempts = Clock(), [], []

    def connect(url: str) -> Conn:
        attempts.append(url)
        if len(attempts) < 5:
            raise OSError('connection to server at "db" failed: Connection refused')
        return Conn()

    ok = migrate.wait(
        "postgresql://u:secret@db:6543/app", 60, connect, clock, clock.sleep, said.append
    )
    assert ok and len(attempts) == 5
    assert said[0].startswith("migrate: waiting for the database at db:6543")
    assert "accepts connections" in said[-1]
    assert not any("secret" in line for line in said)


def test_wait_gives_up_after_the_timeout_with_the_last_error():
    clock, said = Clock(), []

    def refuse(url: str) -> Conn:
        raise OSError("could not translate host name")

    assert not migrate.wait(
        "postgresql://u:p@nowhere/app", 10, refuse, clock, clock.sleep, said.append
    )
    assert clock.now >= 10
    assert (
        said[-1]
        == "migrate: no connection to nowhere:5432 after 10 s: could not translate host name"
    )


def test_an_empty_command_runs_nothing_and_waits_for_nothing(capsys, monkeypatch):
    monkeypatch.setattr(migrate, "wait_for_database", lambda environ: pytest.fail("waited"))
    assert migrate.main({"MIGRATE_COMMAND": "  ", "DATABASE_URL": "postgresql://u:p@db/app"}) == 0
    assert "MIGRATE_COMMAND is empty" in capsys.readouterr().out


def test_no_command_runs_when_the_database_never_answers(monkeypatch):
    monkeypatch.setattr(migrate, "wait_for_database", lambda environ: False)
    monkeypatch.setattr(migrate.os, "execvp", lambda *a: pytest.fail("ran the command"))
    assert migrate.main({"MIGRATE_COMMAND": "flask db upgrade"}) == 1


def test_the_command_replaces_the_process_once_the_database_answers(monkeypatch):
    ran = []
    monkeypatch.setattr(migrate, "wait_for_database", lambda environ: True)
    monkeypatch.setattr(migrate.os, "execvp", lambda file, args: ran.append(args))
    migrate.main({"MIGRATE_COMMAND": "flask db upgrade"})
    assert ran == [["sh", "-c", "flask db upgrade"]]


def test_wait_stops_at_once_when_the_server_refuses_the_credentials():
    clock, said, attempts = Clock(), [], []

    def refuse(url: str) -> Conn:
        attempts.append(url)
        raise OSError('FATAL:  password authentication failed for user "app"')

    assert not migrate.wait(
        "postgresql://app:p@db/app", 60, refuse, clock, clock.sleep, said.append
    )
    assert len(attempts) == 1
    assert said == [
        "migrate: the database at db:5432 refused the connection: "
        'FATAL:  password authentication failed for user "app"'
    ]
