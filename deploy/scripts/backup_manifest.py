"""Check a backup against its manifest before restore touches anything (deploy/scripts/backup.sh).

    python3 deploy/scripts/backup_manifest.py verify DIR --revision REV

Exit 0 when the manifest reads, every file it lists is there with its size and sha256, no file is
there that it does not list, and its migration revision is REV (the running database's). Else
exit 1 with one line per problem, each naming the file or the revision. Standard library only:
it runs with the host's python3, outside the virtualenv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
DUMP = "db.dump"
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(backup: Path) -> tuple[dict | None, list[str]]:
    """Return the parsed manifest, or None and why it cannot be used."""
    path = backup / MANIFEST
    if not path.is_file():
        return None, [f"{path} is missing: not a backup, or an unfinished one"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{path} cannot be read as JSON ({exc})"]
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        return None, [f"{path} is not a format 1 backup manifest"]
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("revision"), str):
        return None, [f"{path} lacks its file list or its migration revision"]
    return manifest, []


def file_problems(backup: Path, files: dict) -> list[str]:
    """Compare the files on disk with the manifest's list: presence, size, sha256, extras."""
    problems = []
    if DUMP not in files:
        problems.append(f"the manifest lists no {DUMP}")
    for name, want in sorted(files.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not isinstance(want, dict):
            problems.append(f"the manifest entry {name!r} is not a file inside the backup")
            continue
        path = backup / relative
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want.get("size"):
            problems.append(
                f"{name} is {path.stat().st_size} bytes, the manifest says {want.get('size')}"
                " (truncated or altered)"
            )
        elif sha256(path) != want.get("sha256"):
            problems.append(f"{name} does not match its sha256 in the manifest (altered)")
    for path in sorted(p for p in backup.rglob("*") if p.is_file()):
        name = path.relative_to(backup).as_posix()
        if name != MANIFEST and name not in files:
            problems.append(f"{name} is not in the manifest (added after the backup)")
    return problems


def verify(backup: Path, revision: str) -> list[str]:
    """Return every reason not to restore backup into a database at revision (none: go)."""
    manifest, problems = load_manifest(backup)
    if manifest is None:
        return problems
    problems = file_problems(backup, manifest["files"])
    if manifest["revision"] != revision:
        problems.append(
            f"the backup's migration revision is {manifest['revision']!r}, the running app's"
            f" database is at {revision!r}: restore it with the app version whose migrations end"
            f" at {manifest['revision']!r}, then upgrade"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check a backup directory before a restore")
    check.add_argument("backup", type=Path)
    check.add_argument("--revision", required=True, help="the running database's revision")
    args = parser.parse_args(argv)
    problems = verify(args.backup, args.revision)
    for problem in problems:
        print(f"restore refused: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.backup}: every file matches its sha256; revision {args.revision}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
