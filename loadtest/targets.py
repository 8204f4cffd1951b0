"""The servers a run compares, and whether each answers before the runs start."""

from __future__ import annotations

import requests

from loadtest.config import Config
from loadtest.report.summary import BASELINE
from loadtest.results import Target

PROBE_PATH = "/bench/plaintext"


def targets_for(cfg: Config) -> list[Target]:
    """The stack and the built-in server, then (REFERENCE=1) the reference servers."""
    targets = [
        Target(
            name="stack",
            url=cfg.stack_url,
            primary=True,
            description="nginx → Tornado-hosted Flask replicas (thread pool) → Postgres",
        ),
        Target(
            name=BASELINE,
            url=cfg.baseline_url,
            primary=True,
            description="the same app (`APP_MODULE`) on Flask's built-in server "
            "(Werkzeug's development server, threaded)",
        ),
    ]
    if cfg.reference:
        targets += [
            Target(
                name="tornado-nothread",
                url=cfg.ref_nothread_url,
                primary=False,
                description="the same app on Tornado's WSGIContainer without a thread pool, "
                "behind the same nginx (the setup many tutorials show)",
            ),
            Target(
                name="gunicorn",
                url=cfg.ref_gunicorn_url,
                primary=False,
                description="the same app on gunicorn with gthread workers, behind the same nginx",
            ),
        ]
    return targets


def probe(url: str, path: str = PROBE_PATH, any_status: bool = False) -> tuple[str, dict[str, str]]:
    """'' when url+path answers 200 (any_status: anything below 500), else why not; plus the
    response headers."""
    try:
        resp = requests.get(url + path, timeout=5)
    except requests.RequestException as exc:
        return f"not reachable ({type(exc).__name__})", {}
    if resp.status_code >= 500 if any_status else resp.status_code != 200:
        return f"{url + path} answered {resp.status_code}", dict(resp.headers)
    return "", dict(resp.headers)


def probe_target(cfg: Config, url: str) -> tuple[str, dict[str, str]]:
    """Probe a target: the demo's /bench/plaintext, or, for your own locustfile, any answer
    below 500 at / (your app need not have either path; it only has to be there)."""
    if cfg.locustfile:
        return probe(url, "/", any_status=True)
    return probe(url)


def probe_all(cfg: Config, targets: list[Target]) -> None:
    """Mark each target that does not answer as skipped, note who serves the others."""
    for t in targets:
        why, headers = probe_target(cfg, t.url)
        if why:
            t.skipped = why
            print(f"  {t.name:<16} {t.url}: SKIPPED, {why}", flush=True)
        else:
            served = ", ".join(
                f"{k}: {headers[k]}" for k in ("Server", "Connection") if k in headers
            )
            t.server = f"({served})" if served else ""
            print(f"  {t.name:<16} {t.url}: ok {t.server}", flush=True)
