"""The host is the platform and the app its tenant: nothing under deploy/tornado imports an app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

HOST = ROOT / "deploy" / "tornado"
HOST_FILES = sorted(HOST.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth, as written (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("flaskstack" if node.level else node.module or "")
    return found


@pytest.mark.parametrize("path", HOST_FILES, ids=[str(p.relative_to(HOST)) for p in HOST_FILES])
def test_the_host_imports_no_app(path: Path) -> None:
    tops = {name.split(".")[0] for name in imported_modules(path)}
    assert "app" not in tops
    assert not tops & {"examples", "loadtest", "tests"}


def test_a_users_package_named_app_is_the_one_served(tmp_path: Path) -> None:
    """With the working directory holding another `app`, the host loads that one, not the demo."""
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text(
        "def create_app():\n"
        "    def wsgi(environ, start_response):\n"
        "        start_response('200 OK', [])\n"
        "        return [b'theirs']\n"
        "    return wsgi\n"
    )
    probe = (
        "from flaskstack.settings import load_wsgi_app\n"
        "app = load_wsgi_app('app:create_app()')\n"
        "print(b''.join(app({}, lambda *a: None)).decode())\n"
    )
    # Run as a script elsewhere, as server.py is: its own folder is first on the path, not the
    # working directory. The demo's `app` (the repository root) is not on the path at all.
    script = tmp_path / "bin" / "probe.py"
    script.parent.mkdir()
    script.write_text(probe)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HOST)}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "theirs"
