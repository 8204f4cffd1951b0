"""The backup manifest: what backup.sh writes (in bash) is what backup_manifest.py verifies.

Both sides run for real: the shell writer on a directory of files, the Python verifier on the
result, before and after each kind of damage a restore must refuse.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.scripts import backup_manifest

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0001"


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    """A backup directory with a dump, two uploads (one with an awkward name) and its manifest."""
    (tmp_path / "uploads").mkdir()
    (tmp_path / "db.dump").write_bytes(b"PGDMP" + bytes(range(256)) * 40)
    (tmp_path / "uploads" / "0123abcd").write_bytes(b"\x00" * 1000)
    (tmp_path / "uploads" / 'a "quoted" name\\x').write_bytes(b"hello")
    subprocess.run(
        ["bash", str(ROOT / "deploy/scripts/backup.sh"), "manifest", str(tmp_path), REVISION,
         "2026-01-01T00:00:00Z", "app"],
        check=True,
    )  # fmt: skip
    return tmp_path


def test_the_shell_writes_json_with_every_file_and_the_revision(backup: Path) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["revision"] == REVISION and manifest["format"] == 1
    assert set(manifest["files"]) == {"db.dump", "uploads/0123abcd", 'uploads/a "quoted" name\\x'}
    assert manifest["files"]["uploads/0123abcd"]["size"] == 1000
    assert backup_manifest.verify(backup, REVISION) == []


def test_a_truncated_file_is_named(backup: Path) -> None:
    dump = backup / "db.dump"
    dump.write_bytes(dump.read_bytes()[:100])
    (problem,) = backup_manifest.verify(backup, REVISION)
    assert problem.startswith("db.dump is 100 bytes") and "truncated" in problem


def test_an_altered_file_is_named(backup: Path) -> None:
    (backup / "uploads" / "0123abcd").write_bytes(b"\x01" * 1000)
    assert backup_manifest.verify(backup, REVISION) == [
        "uploads/0123abcd does not match its sha256 in the manifest (altered)"
    ]


def test_a_missing_or_added_file_is_named(backup: Path) -> None:
    (backup / "uploads" / "0123abcd").unlink()
    (backup / "uploads" / "planted").write_bytes(b"x")
    assert backup_manifest.verify(backup, REVISION) == [
        "uploads/0123abcd is missing",
        "uploads/planted is not in the manifest (added after the backup)",
    ]


def test_another_revision_is_refused_naming_both(backup: Path) -> None:
    (problem,) = backup_manifest.verify(backup, "0002")
    assert "'0001'" in problem and "'0002'" in problem


def test_a_manifest_entry_outside_the_backup_is_refused(backup: Path) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    (backup / "manifest.json").write_text(json.dumps(manifest))
    assert (
        "'../outside' is not a file inside the backup"
        in backup_manifest.verify(backup, REVISION)[0]
    )


@pytest.mark.parametrize("content", [None, "{not json", '{"format": 2}', '{"format": 1}'])
def test_a_missing_or_unreadable_manifest_is_refused(backup: Path, content: str | None) -> None:
    path = backup / "manifest.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    (problem,) = backup_manifest.verify(backup, REVISION)
    assert "manifest.json" in problem


def test_the_command_exits_1_with_one_line_per_problem(backup: Path, capsys) -> None:
    (backup / "db.dump").write_bytes(b"")
    assert backup_manifest.main(["verify", str(backup), "--revision", "0002"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("restore refused: ") for line in lines)
