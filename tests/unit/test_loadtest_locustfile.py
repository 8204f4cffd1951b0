"""`make loadtest LOCUSTFILE=...`: your own locustfile's user classes become the scenarios
(Locust itself lists them; no stack needed, nothing timed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import report, window
from loadtest.config import LOCUSTFILE, SCENARIOS, parse_config
from loadtest.driver import MEASUREFILE, Driver
from tests.unit.test_loadtest_report import results_with, run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_LOCUSTFILE = ROOT / "examples" / "microblog" / "locustfile.py"


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch):
    for name in ("LOCUSTFILE", "SCENARIOS", "SHAPE", "SMOKE"):
        monkeypatch.delenv(name, raising=False)


def test_each_user_class_is_a_scenario_named_after_it(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = parse_config(["--locustfile", "examples/microblog/locustfile.py"])
    assert cfg.locustfile == str(EXAMPLE_LOCUSTFILE)
    assert cfg.scenarios == ["PageUser", "StaticUser"]
    assert cfg.classes == {"PageUser": "PageUser", "StaticUser": "StaticUser"}
    # Run beside the window counter; the ceiling keeps the demo's own constant.
    assert Driver(cfg, ROOT, []).scenario_files() == [EXAMPLE_LOCUSTFILE, MEASUREFILE]


def test_scenarios_pick_among_the_files_classes(monkeypatch):
    monkeypatch.setenv("LOCUSTFILE", str(EXAMPLE_LOCUSTFILE))
    monkeypatch.setenv("SCENARIOS", "StaticUser")
    assert parse_config([]).scenarios == ["StaticUser"]
    monkeypatch.setenv("SCENARIOS", "json")
    with pytest.raises(SystemExit):
        parse_config([])


def test_without_a_locustfile_the_demo_scenarios_run():
    cfg = parse_config([])
    assert cfg.locustfile == ""
    assert cfg.classes == SCENARIOS
    assert Driver(cfg, ROOT, []).scenario_files() == [LOCUSTFILE]
    assert cfg.needs_accounts("api")


def test_a_user_scenario_named_api_gets_no_demo_accounts(tmp_path):
    lf = tmp_path / "lf.py"
    lf.write_text(
        "from locust import FastHttpUser, task\n\n"
        "class api(FastHttpUser):\n"
        "    @task\n"
        "    def t(self):\n"
        "        self.client.get('/')\n"
    )
    cfg = parse_config(["--locustfile", str(lf)])
    assert cfg.scenarios == ["api"]
    assert not cfg.needs_accounts("api")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("from locust import FastHttpUser\n\nclass Base(FastHttpUser):\n    abstract = True\n",
         "has no user class"),
        ("import no_such_module\n", "could not load it"),
    ],
)  # fmt: skip
def test_a_locustfile_without_scenarios_is_refused(tmp_path, capsys, text, says):
    lf = tmp_path / "lf.py"
    lf.write_text(text)
    with pytest.raises(SystemExit):
        parse_config(["--locustfile", str(lf)])
    assert says in capsys.readouterr().err


def test_a_missing_locustfile_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--locustfile", "no/such/locustfile.py"])
    assert "no such file" in capsys.readouterr().err


def test_the_window_counts_once_however_many_files_ask(monkeypatch):
    class Hook(list):
        add_listener = list.append

    class Events:
        test_start, request, test_stop, quitting = Hook(), Hook(), Hook(), Hook()

    monkeypatch.setattr(window, "_attached", None)
    first = window.attach(Events)
    assert window.attach(Events) is first
    assert Events.request == [first.request]


def test_the_report_names_the_locustfile(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = parse_config(["--locustfile", str(EXAMPLE_LOCUSTFILE)])
    runs = [run(sc, t, 1, 100.0) for sc in cfg.scenarios for t in ("stack", "builtin")]
    doc = results_with(runs, cfg=cfg)
    report.write_report(tmp_path, doc)
    text = (tmp_path / "report.md").read_text()
    assert f"your locustfile `{EXAMPLE_LOCUSTFILE}` (PageUser, StaticUser)" in text
    assert f"LOCUSTFILE={EXAMPLE_LOCUSTFILE} SCENARIOS=PageUser,StaticUser" in text
    assert "| PageUser | stack |" in text and "| StaticUser | builtin |" in text
    assert "`api` users take accounts" not in text
    assert "50 concurrent users paced as your locustfile's user classes say" in text
