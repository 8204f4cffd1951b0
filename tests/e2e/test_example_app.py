"""An ordinary Flask project deployed by README "Your app", step by step: examples/microblog.

The project (package `app`, `create_app()`, Flask-SQLAlchemy, Flask-Migrate, a session login,
templates, a static file, Server-Sent Events) is copied to a folder outside the repository, as a
user's own would be. The steps are the README's: `make env`, the `.env` lines of its dotenv
block (read from the README itself, only the folder, the ports and the project's name changed),
a settings file for the app, `make up`. Then what the README promises for it: its pages through
nginx on three replicas, its login on every replica, its static file from nginx, its event
stream live, its tables and none of the demo's, a 503 and recovery across a Postgres restart,
the request id in its log lines, and `make deploy` of a new migration under load, 0 failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, figure, free_port, run, stack, wait_for

EXAMPLE = ROOT / "examples" / "microblog"
SOURCE_ONLY = "docopt==0.6.2"  # no wheel on PyPI, only docopt-0.6.2.tar.gz
DEMO_TABLES = {"users", "posts", "uploads", "world", "fortune", "idempotency_keys"}
# What the stack's own test environment exports, which would otherwise win over the env file.
INHERITED = (
    "APP_SOURCE", "APP_REQUIREMENTS", "APP_MODULE", "MIGRATE_COMMAND", "APP_IMAGE",
    "APP_STATIC_DIR", "APP_ENV_FILE", "BASELINE", "DATABASE_URL", "LOCUSTFILE", "MONITORING",
    "TLS_ENABLED", "APP_REPLICAS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS",
)  # fmt: skip


def readme_env_lines() -> dict[str, str]:
    """The `.env` lines README "Your app" tells a user to write."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your app\n") :]
    block = re.search(r"```dotenv\n(.*?)```", section, re.S)
    assert block, 'README "Your app" has no dotenv block'
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return dict(line.split("=", 1) for line in lines)


def make(*args: str, env: dict[str, str], timeout: float | None = None):
    return run("make", "--no-print-directory", *args, env=env, timeout=timeout, check=False)


def docker(*args: str) -> str:
    return run("docker", *args, timeout=None).stdout.strip()


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """examples/microblog on its own stack, deployed by the README's steps."""
    workdir = tmp_path_factory.mktemp("example")
    source = workdir / "microblog"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.db", "__pycache__"))
    # Like many projects, this one has a requirement published only as a source distribution.
    with (source / "requirements.txt").open("a") as requirements:
        requirements.write(f"{SOURCE_ONLY}\n")
    env_file = workdir / "example.env"
    project = f"{os.environ.get('PROJECT', 'flaskstack-test')}-example"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(PROJECT=project, ENV_FILE=str(env_file))
    # Step 2: make env.
    assert make("env", env=env).returncode == 0
    # Step 3: the README's lines, with this user's folder; ports of its own beside the test stack.
    settings = readme_env_lines()
    assert settings["APP_SOURCE"] and settings["MIGRATE_COMMAND"] == "flask db upgrade"
    stack_port, devserver_port = free_port(), free_port()
    settings |= {
        "APP_SOURCE": str(source),
        "APP_ENV_FILE": str(workdir / "app.env"),
        "STACK_PORT": str(stack_port),
        "DEVSERVER_PORT": str(devserver_port),
        "BASELINE": "1",
        "MONITORING": "0",  # the test stack's Prometheus holds its port
    }
    lines = [
        line for line in env_file.read_text().splitlines() if line.split("=", 1)[0] not in settings
    ]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in settings.items())]) + "\n")
    # Step 4: the app's own settings.
    (workdir / "app.env").write_text("POSTS_PER_PAGE=7\n")
    # Step 5: make up.
    up = make("up", env=env, timeout=900)
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield {
            "url": f"http://127.0.0.1:{stack_port}",
            "baseline": f"http://127.0.0.1:{devserver_port}",
            "env": env,
            "source": source,
            "project": project,
            "make up": up.stdout,
        }
    finally:
        stack("compose", "down", "-v", "--remove-orphans", env={**env, "BASELINE": "1"},
              check=False, timeout=None)  # fmt: skip


def containers(example, service: str) -> list[str]:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={example['project']}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).split()  # fmt: skip


def psql(example, sql: str) -> str:
    (postgres,) = containers(example, "postgres")
    return docker("exec", postgres, "psql", "-U", "app", "-d", "app", "-Atc", sql)


def register(url: str) -> tuple[requests.Session, str]:
    """A new user of the example, logged in through its own form; the session keeps the cookie."""
    session = requests.Session()
    name = f"u{secrets.token_hex(5)}"
    form = {"username": name, "password": secrets.token_urlsafe(12)}
    r = session.post(f"{url}/register", data=form, timeout=10)
    assert r.status_code == 200, r.text[:500]
    r = session.post(f"{url}/login", data=form, timeout=10)
    assert r.status_code == 200 and name in r.text
    return session, name


def test_make_up_names_the_users_app_not_the_demos(example):
    assert "microblog:app" in example["make up"]
    assert "openapi.json" not in example["make up"]
    assert "admin user" not in example["make up"]


def test_its_page_is_served_by_three_replicas_through_nginx(example):
    seen = set()
    for _ in range(9):
        r = requests.get(f"{example['url']}/", timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert "<html" in r.text.lower()
        seen.add(r.headers["X-Served-By"])
    assert len(seen) == 3


def test_a_login_holds_on_every_replica(example):
    session, name = register(example["url"])
    replicas = {}
    for _ in range(9):
        r = session.get(f"{example['url']}/whoami", timeout=10)
        replicas[r.headers["X-Served-By"]] = r.json()["user"]
    assert len(replicas) == 3
    assert set(replicas.values()) == {name}
    r = session.post(f"{example['url']}/notes", data={"body": "from any replica"}, timeout=10)
    assert r.status_code == 200  # the redirect to the index, followed
    notes = requests.get(f"{example['url']}/api/notes", timeout=10).json()
    assert {"body": "from any replica", "author": name} in [
        {"body": n["body"], "author": n["author"]} for n in notes
    ]


def test_its_static_file_comes_from_nginx(example):
    css = (EXAMPLE / "app" / "static" / "style.css").read_bytes()
    r = requests.get(f"{example['url']}/static/style.css", timeout=10)
    assert r.status_code == 200
    assert r.content == css
    assert r.headers["Cache-Control"] == "max-age=604800"
    assert "X-Served-By" not in r.headers  # no replica answered


def test_a_static_path_not_shared_goes_to_the_app(example):
    r = requests.get(f"{example['url']}/static/missing.css", timeout=10)
    assert r.status_code == 404
    assert r.headers["X-Served-By"]  # the replica answered


def test_its_event_stream_delivers_while_the_response_is_open(example):
    """Server-Sent Events through nginx: the hello event, then a note posted meanwhile."""
    session, _ = register(example["url"])
    with requests.get(f"{example['url']}/events", stream=True, timeout=(5, 30)) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.iter_lines(decode_unicode=True)
        assert next(line for line in lines if line.startswith("event:")) == "event: hello"
        body = f"live {secrets.token_hex(4)}"
        r = session.post(f"{example['url']}/notes", data={"body": body}, timeout=10)
        assert r.status_code == 200
        for line in lines:  # bounded by the read timeout: the event must come before it
            if line.startswith("data:") and body in line:
                break
        else:
            pytest.fail("the stream ended before the note's event")


def test_its_tables_exist_and_the_demos_do_not(example):
    tables = set(psql(example, "select tablename from pg_tables where schemaname='public'").split())
    assert {"user", "note", "alembic_version"} <= tables
    assert not tables & DEMO_TABLES
    head = (EXAMPLE / "migrations" / "versions").glob("*.py")
    revisions = {p.name.split("_", 1)[0] for p in head}
    assert psql(example, "select version_num from alembic_version") in revisions


def test_a_requirement_with_no_wheel_was_built_into_the_image(example):
    (replica, *_) = containers(example, "app")
    version = docker("exec", replica, "python3", "-c", "import docopt; print(docopt.__version__)")
    assert version == SOURCE_ONLY.split("==")[1]


def test_its_own_settings_reach_it(example):
    for container in containers(example, "app"):
        assert docker("exec", container, "printenv", "POSTS_PER_PAGE") == "7"


def test_its_log_lines_carry_the_request_id(example):
    rid = f"example-{secrets.token_hex(8)}"
    name = f"u{secrets.token_hex(5)}"
    form = {"username": name, "password": secrets.token_urlsafe(12)}
    r = requests.post(
        f"{example['url']}/register", data=form, headers={"X-Request-ID": rid}, timeout=10
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == rid

    def logged() -> list[dict]:
        found = []
        for container in containers(example, "app"):
            for line in run("docker", "logs", container).stdout.splitlines():
                if rid in line and line.startswith("{"):
                    found.append(json.loads(line))
        return found

    wait_for(logged, 10, "the app's log line")
    (entry,) = [e for e in logged() if name in e["message"]]
    assert entry["request_id"] == rid


def test_the_baseline_serves_the_same_app(example):
    r = requests.get(f"{example['baseline']}/whoami", timeout=10)
    assert r.headers["Server"].startswith("Werkzeug/")
    assert r.json() == {"user": None}


def test_postgres_restart_is_a_503_then_every_replica_recovers(example):
    started = {
        c: docker("inspect", "-f", "{{.State.StartedAt}}", c) for c in containers(example, "app")
    }
    (postgres,) = containers(example, "postgres")
    docker("stop", postgres)
    try:
        outage = [
            requests.get(
                f"{example['url']}/api/notes", headers={"Accept": "application/json"}, timeout=15
            )
            for _ in range(6)
        ]
    finally:
        docker("start", postgres)
    assert {r.status_code for r in outage} == {503}
    for r in outage:
        assert r.json()["error"]["code"] == "database_unavailable"
        assert r.headers["Retry-After"].isdigit()

    def every_replica_serves() -> bool:
        ok = set()
        for _ in range(9):
            r = requests.get(f"{example['url']}/api/notes", timeout=15)
            if r.status_code == 200:
                ok.add(r.headers["X-Served-By"])
        return len(ok) == 3

    wait_for(every_replica_serves, 60, "every replica serving after Postgres came back")
    after = {c: docker("inspect", "-f", "{{.State.StartedAt}}", c) for c in started}
    assert after == started  # no replica was restarted


class PacedLoad:
    """GETs of the page and the notes API at a steady pace until stopped; records each answer."""

    def __init__(self, url: str, rate: float = 20.0) -> None:
        self.url, self.interval = url, 1 / rate
        self.results: list[tuple[str, int | str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        paths = ["/", "/api/notes"]
        n = 0
        while not self.stopped.wait(self.interval):
            path = paths[n % 2]
            n += 1
            try:
                status: int | str = session.get(f"{self.url}{path}", timeout=10).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.results.append((path, status))

    def __enter__(self) -> PacedLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


MOOD_MIGRATION = '''"""notes have a mood

Revision ID: {revision}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("note") as batch_op:
        batch_op.add_column(sa.Column("mood", sa.String(length=16), nullable=True))


def downgrade():
    with op.batch_alter_table("note") as batch_op:
        batch_op.drop_column("mood")
'''


def add_a_mood_column(source: Path) -> None:
    """The user's next version: an expand migration (a nullable column) and code that uses it."""
    versions = source / "migrations" / "versions"
    (head,) = [p.name.split("_", 1)[0] for p in versions.glob("*.py")]
    (versions / "a1b2c3d4e5f6_notes_have_a_mood.py").write_text(
        MOOD_MIGRATION.format(revision="a1b2c3d4e5f6", down=head)
    )
    models = source / "app" / "models.py"
    text = models.read_text()
    anchor = "    user_id: so.Mapped[int]"
    assert anchor in text and '"body": self.body' in text
    text = text.replace(
        anchor,
        '    mood: so.Mapped[str | None] = so.mapped_column(sa.String(16), default="calm")\n'
        + anchor,
    )
    models.write_text(text.replace('"body": self.body', '"mood": self.mood, "body": self.body'))


def test_make_deploy_ships_a_migration_with_no_failed_request(example):
    add_a_mood_column(example["source"])
    started = time.monotonic()
    with PacedLoad(example["url"]) as load:
        deploy = make("deploy", env=example["env"], timeout=900)
    took = time.monotonic() - started
    assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-4000:]
    failed = [r for r in load.results if r[1] != 200]
    assert load.results and not failed, failed[:10]
    figure(
        "example-deploy",
        f"make deploy of examples/microblog with a new migration: {took:.0f} s, "
        f"{len(load.results)} requests, {len(failed)} failed",
    )
    assert "mood" in psql(example, "select column_name from information_schema.columns "
                                   "where table_name='note'").split()  # fmt: skip
    session, _ = register(example["url"])
    session.post(f"{example['url']}/notes", data={"body": "after the deploy"}, timeout=10)
    notes = requests.get(f"{example['url']}/api/notes", timeout=10).json()
    assert notes[0]["body"] == "after the deploy" and notes[0]["mood"] == "calm"


@pytest.fixture(scope="module")
def own_loadtest(example, tmp_path_factory):
    """`make loadtest LOCUSTFILE=examples/microblog/locustfile.py` in its smoke form, once."""
    results_dir = tmp_path_factory.mktemp("own-loadtest")
    env = {
        **example["env"],
        "SMOKE": "1",
        # One Locust process: the ceiling is measured once, which keeps the smoke short.
        "PROCESSES": "1",
        "LOCUSTFILE": "examples/microblog/locustfile.py",
        "STACK_URL": example["url"],
        "BASELINE_URL": example["baseline"],
        "RESULTS_DIR": str(results_dir),
    }
    for name in ("SCENARIOS", "USERS", "DURATION", "ROUNDS", "WARMUP", "REFERENCE", "SHAPE"):
        env.pop(name, None)
    proc = run(sys.executable, "-m", "loadtest.run", env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    return out_dir, json.loads((out_dir / "results.json").read_text()), proc.stdout


def test_own_locustfile_runs_each_user_class_against_both_targets(own_loadtest):
    out_dir, results, stdout = own_loadtest
    scenarios = ["PageUser", "StaticUser"]
    assert results["config"]["scenarios"] == scenarios
    ran = {(r["scenario"], r["target"]) for r in results["runs"]}
    assert ran == {(s, t) for s in scenarios for t in ("stack", "builtin")}
    for r in results["runs"]:
        assert not r.get("error"), r
        assert r["requests"] > 0 and r["failures_total"] == 0, r
    assert results["ceiling"]["rps"]["1"] > 0
    locustfile = EXAMPLE / "locustfile.py"
    assert f"scenarios from {locustfile}: PageUser, StaticUser" in stdout
    report = (out_dir / "report.md").read_text()
    assert f"your locustfile `{locustfile}`" in report
