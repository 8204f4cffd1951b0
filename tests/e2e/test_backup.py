"""The restore drill, as `make backup` / `make restore` users run it, on the test stack.

Users, posts and uploads go in through nginx; `make backup` runs while paced writers keep
posting; the test stack's containers and volumes are removed (what `make clean` does to a
stack) and a fresh one comes up; `make restore` brings the data back while clients poll. Then
the refusals: a database that holds data, and damaged or mismatched backups, each with FORCE=1
so that the damage is the only reason to refuse, and each changing nothing.

The stack is left up and healthy, holding the restored data, for the tests that follow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, compose, figure, run, stack, wait_healthy

REPLICAS = 3
SEED_USERS = 4
POSTS_PER_USER = 60
UPLOAD_SIZES = (1, 70_000, 1_500_000)
WRITERS = 4  # each posts in sequence, so its commit order is its own order
PACED_RATE = 5  # posts a second per writer, during the backup
TIMEOUT = 10


def project() -> str:
    """The stack under test; never the user's own (`make clean` here removes its volumes)."""
    name = os.environ.get("PROJECT", "")
    assert name and name != "flaskstack", "run through `make test-e2e` (a test stack's PROJECT)"
    return name


def make(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a make target against the test stack; return the result and its seconds."""
    start = time.monotonic()
    result = run(
        "make", "--no-print-directory", *args, check=False, timeout=300, env={**os.environ, **env}
    )
    return result, time.monotonic() - start


def login(stack_url: str, username: str, password: str) -> dict[str, str]:
    r = requests.post(
        f"{stack_url}/api/auth/login",
        json={"username": username, "password": password},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def register(stack_url: str) -> tuple[str, str]:
    """A new user: (name, password)."""
    name, password = f"bk{secrets.token_hex(5)}", secrets.token_urlsafe(16)
    r = requests.post(
        f"{stack_url}/api/auth/register",
        json={"username": name, "password": password},
        timeout=TIMEOUT,
    )
    assert r.status_code == 201, r.text
    return name, password


def all_pages(url: str, headers: dict[str, str] | None = None) -> dict[int, dict]:
    """Every item of a paginated list endpoint, by id."""
    items: dict[int, dict] = {}
    offset = 0
    while True:
        r = requests.get(
            url, params={"limit": 100, "offset": offset}, headers=headers, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text
        page = r.json()["items"]
        items.update((item["id"], item) for item in page)
        if len(page) < 100:
            return items
        offset += 100


def psql(sql: str) -> str:
    """One value from the test stack's database (psql in its postgres container)."""
    user = stack("get", "POSTGRES_USER", "app").stdout.strip()
    db = stack("get", "POSTGRES_DB", "app").stdout.strip()
    return compose("exec", "-T", "postgres", "psql", "-At", "-U", user, "-d", db, "-c", sql).stdout


WORLD_DIGEST = (
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || randomnumber, ',' ORDER BY id))"
    " FROM world"
)


@dataclass
class PacedWriter:
    """One thread posting at PACED_RATE; every attempt recorded as (seq, start, end, status, id)."""

    stack_url: str
    headers: dict[str, str]
    tag: str
    attempts: list[tuple[int, float, float, int | None, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        t0 = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            start = time.time()
            status = post_id = None
            try:
                r = session.post(
                    f"{self.stack_url}/api/posts",
                    json={"title": f"{self.tag} {seq}", "body": f"paced write {seq}"},
                    headers=self.headers,
                    timeout=TIMEOUT,
                )
                status = r.status_code
                post_id = r.json().get("id") if status == 201 else None
            except requests.RequestException:
                pass
            self.attempts.append((seq, start, time.time(), status, post_id))
            seq += 1
            time.sleep(max(0.0, t0 + seq / PACED_RATE - time.monotonic()))
        session.close()

    def __enter__(self) -> PacedWriter:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class Poller:
    """Threads reading one post in a loop; every answer kept as (start, end, status, JSON body)."""

    url: str
    seen: list[tuple[float, float, int | None, dict | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.monotonic()
                status, body = None, None
                try:
                    r = session.get(self.url, timeout=TIMEOUT)
                    status = r.status_code
                    if r.headers.get("Content-Type", "").startswith("application/json"):
                        body = r.json()
                except (requests.RequestException, ValueError):
                    pass
                self.seen.append((start, time.monotonic(), status, body))
                time.sleep(0.02)

    def __enter__(self) -> Poller:
        self._threads = [threading.Thread(target=self.run, daemon=True) for _ in range(2)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@dataclass
class Drill:
    backup: Path
    users: dict[str, str]  # username -> password
    posts: dict[int, dict]  # every post when the writer stopped
    users_before: dict[int, dict]
    uploads: dict[int, str]  # upload id -> sha256 of what was sent
    world_before: str
    acked_before_backup: list[int]  # post ids of paced writes acknowledged before make backup
    paced: list[list[tuple[int, float, float, int | None, int | None]]]  # per writer
    backup_window: tuple[float, float]
    restore_polls: list[tuple[float, float, int | None, dict | None]]
    polled_post: dict
    fresh_posts: int  # posts in the fresh stack before the restore
    backup_result: subprocess.CompletedProcess[str]
    restore_result: subprocess.CompletedProcess[str]


def bring_up() -> None:
    """The test stack as `make test-stack-up` starts it, for the tests that follow too.

    On a loaded machine a fresh replica can miss its start-up health checks; compose then
    refuses to start nginx (seen here at load average 16). The replica turns healthy a little
    later, and another `up`, as a user would run `make up` again, starts what is missing.
    """
    for _ in range(3):
        result = compose("up", "-d", "--remove-orphans", "--scale", f"app={REPLICAS}", check=False)
        if result.returncode == 0:
            break
        time.sleep(10)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_healthy(300)


@pytest.fixture(scope="module")
def drill(stack_url: str, tmp_path_factory: pytest.TempPathFactory) -> Drill:
    project()
    root = tmp_path_factory.mktemp("backups") / "backups"
    admin = stack("get", "ADMIN_USERNAME", "admin").stdout.strip()
    admin_headers = login(stack_url, admin, stack("get", "ADMIN_PASSWORD").stdout.strip())

    # Users, posts and uploads, all committed before the backup starts.
    users: dict[str, str] = {}
    headers: dict[str, dict[str, str]] = {}
    for _ in range(SEED_USERS):
        name, password = register(stack_url)
        users[name] = password
        headers[name] = login(stack_url, name, password)
    with requests.Session() as session:
        for name in users:
            for i in range(POSTS_PER_USER):
                r = session.post(
                    f"{stack_url}/api/posts",
                    json={"title": f"{name} {i}", "body": secrets.token_hex(40) + " ünïcødé"},
                    headers=headers[name],
                    timeout=TIMEOUT,
                )
                assert r.status_code == 201, r.text
    uploads = {}
    for size, name in zip(UPLOAD_SIZES, users, strict=False):
        payload = secrets.token_bytes(size)
        r = requests.post(
            f"{stack_url}/api/uploads",
            files={"file": ("f.bin", payload)},
            headers=headers[name],
            timeout=30,
        )
        assert r.status_code == 201, r.text
        uploads[r.json()["id"]] = hashlib.sha256(payload).hexdigest()
    world_before = psql(WORLD_DIGEST)

    # The backup, while writers keep posting.
    writers = [
        PacedWriter(stack_url, headers[name], f"paced-{secrets.token_hex(3)}")
        for name in list(users)[:WRITERS]
    ]
    with contextlib.ExitStack() as running:
        for writer in writers:
            running.enter_context(writer)
        time.sleep(1.5)
        started = time.time()
        acked = [a[4] for w in writers for a in w.attempts if a[3] == 201 and a[2] < started]
        backup_result, backup_seconds = make("backup", BACKUP_ROOT=str(root))
        ended = time.time()
        time.sleep(1.5)
    assert backup_result.returncode == 0, backup_result.stdout + backup_result.stderr
    backups = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(backups) == 1, backups
    posts = all_pages(f"{stack_url}/api/posts")
    users_before = all_pages(f"{stack_url}/api/admin/users", admin_headers)
    polled_post = posts[min(posts)]

    # `make clean` for this stack: containers, networks and volumes gone; then `make up`.
    try:
        compose("down", "--remove-orphans", "--volumes")
        volumes = run(
            "docker",
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project()}",
        ).stdout.split()
        assert volumes == [], f"volumes left after down --volumes: {volumes}"
    finally:
        bring_up()
    fresh_posts = requests.get(f"{stack_url}/api/posts", timeout=TIMEOUT).json()["total"]

    with Poller(f"{stack_url}/api/posts/{polled_post['id']}") as poller:
        time.sleep(0.5)
        restore_result, restore_seconds = make("restore", f"BACKUP={backups[0]}")
        time.sleep(0.5)
    attempts = [a for w in writers for a in w.attempts]
    during = [a for a in attempts if a[1] < ended and a[2] > started]
    failed = [a for a in attempts if a[3] != 201]
    figure(
        "backup seconds",
        f"{backup_seconds:.1f} ({len(posts)} posts, {len(uploads)} uploads,"
        f" {world_before.split()[0]} World rows)",
    )
    figure(
        "backup under paced writes",
        f"{len(during)} requests during the {ended - started:.1f} s backup from {WRITERS}"
        f" writers offering {WRITERS * PACED_RATE}/s, {len(failed)} failed",
    )
    closed = [p for p in poller.seen if p[2] == 503]
    window = max(p[1] for p in closed) - min(p[0] for p in closed) if closed else 0.0
    figure("restore seconds", f"{restore_seconds:.1f} (503 to clients for {window:.1f} s of it)")
    figure(
        "restore as clients saw it",
        ", ".join(
            f"{status}: {sum(1 for p in poller.seen if p[2] == status)}"
            for status in sorted({p[2] for p in poller.seen}, key=str)
        ),
    )
    return Drill(
        backup=backups[0],
        users=users,
        posts=posts,
        users_before=users_before,
        uploads=uploads,
        world_before=world_before,
        acked_before_backup=acked,
        paced=[w.attempts for w in writers],
        backup_window=(started, ended),
        restore_polls=poller.seen,
        polled_post=polled_post,
        fresh_posts=fresh_posts,
        backup_result=backup_result,
        restore_result=restore_result,
    )


def test_backup_fails_no_request_of_the_paced_writes(drill):
    started, ended = drill.backup_window
    attempts = [a for attempts in drill.paced for a in attempts]
    during = [a for a in attempts if a[1] < ended and a[2] > started]
    assert during, "no write ran during the backup"
    assert [a for a in attempts if a[3] != 201] == []


def test_backup_is_private_and_its_manifest_lists_every_file(drill):
    assert drill.backup.parent.stat().st_mode & 0o777 == 0o700
    assert drill.backup.stat().st_mode & 0o777 == 0o700
    manifest = json.loads((drill.backup / "manifest.json").read_text())
    assert manifest["revision"] == psql("SELECT version_num FROM alembic_version").strip()
    files = {p.relative_to(drill.backup).as_posix() for p in drill.backup.rglob("*") if p.is_file()}
    assert files == {"manifest.json", *manifest["files"]}
    for path in drill.backup.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    for name, entry in manifest["files"].items():
        data = (drill.backup / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert set(drill.uploads.values()) <= {e["sha256"] for e in manifest["files"].values()}


def test_restore_brings_back_every_row_committed_before_the_dump(drill, stack_url):
    assert drill.restore_result.returncode == 0, drill.restore_result.stderr
    assert drill.fresh_posts == 0, "the fresh stack was not empty: were the volumes removed?"
    restored = all_pages(f"{stack_url}/api/posts")
    # Nothing that was not there, and each restored post identical, author and times included.
    assert set(restored) <= set(drill.posts)
    assert [i for i in restored if restored[i] != drill.posts[i]] == []
    # Every post but the paced ones was committed before the backup began.
    paced_ids = {a[4] for attempts in drill.paced for a in attempts if a[4] is not None}
    assert set(drill.posts) - paced_ids <= set(restored)
    # Paced writes: all acknowledged before `make backup` started are back, and what is back
    # is a prefix of each writer's sequence (one snapshot, no gaps).
    assert set(drill.acked_before_backup) <= set(restored)
    for attempts in drill.paced:
        back = [a[4] in restored for a in sorted(attempts) if a[4] is not None]
        assert back == sorted(back, reverse=True), "a writer's restored posts have gaps"
    admin = stack("get", "ADMIN_USERNAME", "admin").stdout.strip()
    admin_headers = login(stack_url, admin, stack("get", "ADMIN_PASSWORD").stdout.strip())
    assert all_pages(f"{stack_url}/api/admin/users", admin_headers) == drill.users_before
    assert psql(WORLD_DIGEST) == drill.world_before


def test_restore_brings_back_every_upload_with_its_sha256(drill, stack_url):
    for upload_id, digest in drill.uploads.items():
        r = requests.get(f"{stack_url}/api/uploads/{upload_id}", timeout=30)
        assert r.status_code == 200, r.text
        assert hashlib.sha256(r.content).hexdigest() == digest


def test_logins_work_after_restore(drill, stack_url):
    for name, password in drill.users.items():
        r = requests.get(
            f"{stack_url}/api/auth/me", headers=login(stack_url, name, password), timeout=TIMEOUT
        )
        assert r.status_code == 200 and r.json()["username"] == name


def test_clients_see_503_json_while_restoring_never_half_restored_data(drill):
    polls = sorted(drill.restore_polls, key=lambda p: p[0])
    assert 503 in [p[2] for p in polls], "no request saw the restore"
    for _start, _end, status, body in polls:
        if status == 200:
            assert body == drill.polled_post
        elif status == 503:
            assert body["error"]["code"] == "database_unavailable", body
        else:
            assert status == 404 and body["error"]["code"] == "not_found", (status, body)
    # Empty, then closed, then whole: no request sent after a client saw the restored post
    # found the empty database again.
    first_whole = min(end for _start, end, status, _ in polls if status == 200)
    assert [p for p in polls if p[0] > first_whole and p[2] != 200] == []
    # Nor any earlier state after a later one (a 404 sent after a 503 had come back).
    assert went_back(polls) == []


# The states a reader of one post goes through in a restore, in order: not found (the fresh
# stack), closed (503), restored.
RESTORE_STATES = {404: 0, 503: 1, 200: 2}


def went_back(polls: list[tuple[float, float, int | None, dict | None]]) -> list[tuple]:
    """Polls that were sent after some answer had come back with a later state, and got an
    earlier one. Two readers overlap, so only a request sent after an answer arrived counts."""
    answered = sorted(polls, key=lambda p: p[1])
    latest, i, back = -1, 0, []
    for poll in sorted(polls, key=lambda p: p[0]):
        while i < len(answered) and answered[i][1] < poll[0]:
            latest = max(latest, RESTORE_STATES[answered[i][2]])
            i += 1
        if RESTORE_STATES[poll[2]] < latest:
            back.append(poll[:3])
    return back


def test_restore_refuses_a_database_that_holds_data(drill, stack_url):
    result, _ = make("restore", f"BACKUP={drill.backup}")
    assert result.returncode != 0
    assert "holds data" in result.stderr and "FORCE=1" in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr


def damage_truncated(backup: Path) -> str:
    dump = backup / "db.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    return "db.dump is"


def damage_altered_upload(backup: Path) -> str:
    upload = max((backup / "uploads").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(upload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    upload.write_bytes(bytes(data))
    return f"uploads/{upload.name} does not match its sha256"


def damage_added_file(backup: Path) -> str:
    (backup / "uploads" / "planted").write_bytes(b"x")
    return "uploads/planted is not in the manifest"


def damage_revision(backup: Path) -> str:
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["revision"] = "0000_elsewhere"
    (backup / "manifest.json").write_text(json.dumps(manifest))
    return "migration revision is '0000_elsewhere'"


def damage_dump_with_matching_manifest(backup: Path) -> str:
    """A dump pg_restore rejects halfway, listed with its true sha256: the restore starts."""
    dump = backup / "db.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size * 2 // 3])
    manifest = json.loads((backup / "manifest.json").read_text())
    (backup / "manifest.json").unlink()
    run("deploy/scripts/backup.sh", "manifest", str(backup), manifest["revision"], "-", "app")
    return "restore failed; putting the stack back as it was"


def damage_manifest_missing(backup: Path) -> str:
    (backup / "manifest.json").unlink()
    return "manifest.json is missing"


@pytest.fixture(scope="module")
def sentinel(drill, stack_url) -> dict:
    """A post written after the backup: any restore, even a partial one, would remove it."""
    name, password = register(stack_url)
    r = requests.post(
        f"{stack_url}/api/posts",
        json={"title": "after", "body": "the backup"},
        headers=login(stack_url, name, password),
        timeout=TIMEOUT,
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncated,
        damage_altered_upload,
        damage_added_file,
        damage_revision,
        damage_manifest_missing,
        damage_dump_with_matching_manifest,
    ],
)
def test_restore_refuses_a_damaged_backup_and_changes_nothing(
    drill, stack_url, sentinel, tmp_path, damage
):
    copy = tmp_path / "backup"
    shutil.copytree(drill.backup, copy)
    expected = damage(copy)
    result, _ = make("restore", f"BACKUP={copy}", FORCE="1")
    assert result.returncode != 0
    assert expected in result.stderr and "nothing was changed" in result.stderr, result.stderr
    r = requests.get(f"{stack_url}/api/posts/{sentinel['id']}", timeout=TIMEOUT)
    assert r.json() == sentinel
    assert requests.get(f"{stack_url}/readyz", timeout=TIMEOUT).status_code == 200


def test_a_second_restore_while_one_runs_is_refused(drill, stack_url, sentinel, tmp_path):
    """Two `make restore` at once: the second refuses at once and changes nothing; the first
    (a dump that fails halfway, so it rolls back) runs to its own end."""
    copy = tmp_path / "backup"
    shutil.copytree(drill.backup, copy)
    expected = damage_dump_with_matching_manifest(copy)
    first = subprocess.Popen(
        ["make", "--no-print-directory", "restore", f"BACKUP={copy}", "FORCE=1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:  # until the first holds the lock and has closed the database
            if "verified and staged" in line:
                break
        else:
            raise AssertionError(f"the first restore ended early: {first.stderr.read()}")
        second, _ = make("restore", f"BACKUP={drill.backup}", FORCE="1")
    finally:
        _out, err = first.communicate(timeout=300)
    assert second.returncode != 0
    assert "another restore" in second.stderr and "nothing was changed" in second.stderr
    assert first.returncode != 0 and expected in err, err
    r = requests.get(f"{stack_url}/api/posts/{sentinel['id']}", timeout=TIMEOUT)
    assert r.json() == sentinel
