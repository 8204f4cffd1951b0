"""The comparison runner behind `make loadtest`.

    python -m loadtest.run                      # defaults: under 10 minutes on 2 cores
    SCENARIOS=json,db ROUNDS=5 python -m loadtest.run
    SMOKE=1 python -m loadtest.run              # a few seconds per scenario (CI)
    SHAPE=step SCENARIOS=json python -m loadtest.run   # find each target's knee

Every setting is an environment variable and the same-named flag (`--users 20`); see
loadtest/README.md. It writes loadtest/results/<UTC timestamp>/ and ends with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from loadtest import profile, report
from loadtest.sampling import (
    CGROUP_ROOT,
    Cgroups,
    ContainerSampler,
    ProcessTreeSampler,
    compose_containers,
)

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
STEPFILE = HERE / "stepload.py"

SCENARIOS = {
    "plaintext": "PlaintextUser",
    "json": "JsonUser",
    "db": "DbUser",
    "queries": "QueriesUser",
    "fortunes": "FortunesUser",
    "io": "IoUser",
    "api": "ApiUser",
}
PROBE_PATH = "/bench/plaintext"


@dataclass
class Config:
    scenarios: list[str]
    users: int
    duration: float
    warmup: float
    rounds: int
    stack_url: str
    baseline_url: str
    reference: bool
    ref_nothread_url: str
    ref_gunicorn_url: str
    ceiling_url: str
    ceiling_duration: float
    results_dir: str
    smoke: bool
    shape: str
    processes: str
    compose_project: str
    login_rate: float
    api_accounts: int
    step_users: int
    step_time: float
    step_max: int
    timeout: float
    docker_stats: bool
    profile: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_config(argv: list[str]) -> Config:
    smoke = _flag(_env("SMOKE", "0"))
    # Defaults: 7 scenarios x 2 targets x 3 rounds x (2 s warm-up + 8 s) plus the ceiling
    # and account set-up come to about 8 minutes on a 2-core machine.
    d = {
        "users": "10" if smoke else "50",
        "duration": "3" if smoke else "8",
        "warmup": "1" if smoke else "2",
        "rounds": "1" if smoke else "3",
        "ceiling_duration": "2" if smoke else "5",
        "api_accounts": "3" if smoke else "10",
    }
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--scenarios", default=_env("SCENARIOS", ""), help="comma list (default: all)")
    add("--users", type=int, default=int(_env("USERS", d["users"])))
    add(
        "--duration",
        type=float,
        default=float(_env("DURATION", d["duration"])),
        help="seconds measured per run",
    )
    add(
        "--warmup",
        type=float,
        default=float(_env("WARMUP", d["warmup"])),
        help="seconds before measuring",
    )
    add("--rounds", type=int, default=int(_env("ROUNDS", d["rounds"])))
    add("--stack-url", default=_env("STACK_URL", "http://127.0.0.1:8080"))
    add("--baseline-url", default=_env("BASELINE_URL", "http://127.0.0.1:5000"))
    add("--reference", action="store_true", default=_flag(_env("REFERENCE", "0")))
    add("--ref-nothread-url", default=os.environ.get("REF_NOTHREAD_URL", ""))
    add("--ref-gunicorn-url", default=os.environ.get("REF_GUNICORN_URL", ""))
    add("--ceiling-url", default=_env("CEILING_URL", ""))
    add(
        "--ceiling-duration",
        type=float,
        default=float(_env("CEILING_DURATION", d["ceiling_duration"])),
    )
    add("--results-dir", default=_env("RESULTS_DIR", str(HERE / "results")))
    add("--smoke", action="store_true", default=smoke)
    add("--shape", default=_env("SHAPE", ""), choices=["", "step"])
    add("--processes", default=_env("PROCESSES", "auto"), help="Locust worker processes: auto or N")
    # The Makefile exports PROJECT (the test stack is another project beside yours).
    project = _env("COMPOSE_PROJECT", _env("PROJECT", _env("COMPOSE_PROJECT_NAME", "flaskstack")))
    add("--compose-project", default=project)
    add(
        "--login-rate",
        type=float,
        default=float(_env("LOGIN_RATE", "1")),
        help="re-logins/s in api",
    )
    add("--api-accounts", type=int, default=int(_env("API_ACCOUNTS", d["api_accounts"])))
    add("--step-users", type=int, default=int(_env("STEP_USERS", "5" if smoke else "50")))
    add("--step-time", type=float, default=float(_env("STEP_TIME", "3" if smoke else "8")))
    add("--step-max", type=int, default=int(_env("STEP_MAX", "10" if smoke else "600")))
    add(
        "--docker-stats",
        default=_env("DOCKER_STATS", "1"),
        help="0: do not read the containers' memory and CPU from their cgroups",
    )
    add("--profile", action="store_true", default=_flag(_env("PROFILE", "0")), help="py-spy pass")
    add(
        "--timeout",
        type=float,
        default=float(_env("REQUEST_TIMEOUT", "10")),
        help="per request, seconds",
    )
    a = p.parse_args(argv)
    # Step mode takes about 100 s per scenario and target: two telling scenarios by default.
    default = "json,io" if a.shape == "step" else ",".join(SCENARIOS)
    scenarios = [s.strip() for s in (a.scenarios or default).split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if a.processes != "auto" and not a.processes.isdigit():
        p.error("PROCESSES must be auto or a number")
    stack = a.stack_url.rstrip("/")
    return Config(
        scenarios=scenarios,
        users=a.users,
        duration=a.duration,
        warmup=a.warmup,
        rounds=a.rounds,
        stack_url=stack,
        baseline_url=a.baseline_url.rstrip("/"),
        reference=a.reference,
        ref_nothread_url=(a.ref_nothread_url or f"{stack}/ref/tornado-nothread").rstrip("/"),
        ref_gunicorn_url=(a.ref_gunicorn_url or f"{stack}/ref/gunicorn").rstrip("/"),
        ceiling_url=a.ceiling_url or f"{stack}/nginx/plaintext",
        ceiling_duration=a.ceiling_duration,
        results_dir=a.results_dir,
        smoke=a.smoke,
        shape=a.shape,
        processes=a.processes,
        compose_project=a.compose_project,
        login_rate=a.login_rate,
        api_accounts=max(1, a.api_accounts),
        step_users=a.step_users,
        step_time=a.step_time,
        step_max=a.step_max,
        timeout=a.timeout,
        docker_stats=_flag(a.docker_stats),
        profile=a.profile,
    )


# --- targets and the machine -------------------------------------------------------------


def targets_for(cfg: Config) -> list[dict[str, Any]]:
    targets = [
        {
            "name": "stack",
            "url": cfg.stack_url,
            "primary": True,
            "description": "nginx → Tornado-hosted Flask replicas (thread pool) → Postgres",
        },
        {
            "name": report.BASELINE,
            "url": cfg.baseline_url,
            "primary": True,
            "description": "the same app on Flask's built-in server (`flask run`, threaded)",
        },
    ]
    if cfg.reference:
        targets += [
            {
                "name": "tornado-nothread",
                "url": cfg.ref_nothread_url,
                "primary": False,
                "description": "the same app on Tornado's WSGIContainer without a thread pool, "
                "behind the same nginx (the setup many tutorials show)",
            },
            {
                "name": "gunicorn",
                "url": cfg.ref_gunicorn_url,
                "primary": False,
                "description": "the same app on gunicorn with gthread workers, "
                "behind the same nginx",
            },
        ]
    return targets


def probe(url: str, path: str = PROBE_PATH) -> tuple[str, dict[str, str]]:
    """'' when url+path answers 200, else why not; plus the response headers."""
    try:
        resp = requests.get(url + path, timeout=5)
    except requests.RequestException as exc:
        return f"not reachable ({type(exc).__name__})", {}
    if resp.status_code != 200:
        return f"{url + path} answered {resp.status_code}", dict(resp.headers)
    return "", dict(resp.headers)


def machine_info() -> dict[str, str]:
    info = {
        "cores": str(os.cpu_count()),
        "cpu": "?",
        "memory": "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    # Not `import locust`: it monkey-patches the whole process for gevent.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["locust"] = importlib.metadata.version("locust")
    for key, cmd in {
        "docker": ["docker", "version", "--format", "{{.Server.Version}}"],
        "git commit": ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
    }.items():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)  # noqa: S603
            if out.returncode == 0 and out.stdout.strip():
                info[key] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    with contextlib.suppress(OSError):
        info["load average before the run"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


# --- one Locust run ----------------------------------------------------------------------


class Runner:
    def __init__(self, cfg: Config, out_dir: Path, containers: list[str]) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.containers = containers
        self.started = time.monotonic()

    def locust(
        self,
        user_class: str,
        host: str,
        prefix: str,
        processes: int,
        users: int,
        warmup: float,
        duration: float,
        env: dict[str, str] | None = None,
        step: bool = False,
    ) -> dict[str, Any]:
        """Run Locust once, headless, and return what the window counted plus resource use."""
        measure_dir = self.out_dir / "measure" / prefix
        run_env = {
            **os.environ,
            "LOADTEST_MEASURE_DIR": str(measure_dir),
            "LOADTEST_WARMUP": str(warmup),
            "LOADTEST_DURATION": str(duration),
            "LOADTEST_PROCESSES": str(processes),
            "LOADTEST_TIMEOUT": str(self.cfg.timeout),
            "LOADTEST_LOGIN_RATE": str(self.cfg.login_rate),
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "locust", "--headless", "--host", host]
        if step:
            cmd += ["-f", f"{LOCUSTFILE},{STEPFILE}"]
            run_env.update(
                LOADTEST_PER_SECOND="1",
                LOADTEST_STEP_USERS=str(self.cfg.step_users),
                LOADTEST_STEP_TIME=str(self.cfg.step_time),
                LOADTEST_STEP_MAX=str(self.cfg.step_max),
            )
            runtime = -(-self.cfg.step_max // self.cfg.step_users) * self.cfg.step_time
        else:
            # Users start within half a second; the rest of the warm-up runs at full load.
            runtime = math.ceil(warmup + duration) + 1
            cmd += ["-f", str(LOCUSTFILE), "-u", str(users), "-r", str(users * 2)]
            cmd += ["-t", f"{runtime}s", "--reset-stats"]
        base = self.out_dir / prefix
        cmd += [
            user_class,
            "--csv",
            str(base),
            "--html",
            f"{base}.html",
            "--json-file",
            str(base),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        if processes > 1:
            cmd += ["--processes", str(processes)]
        log_path = Path(f"{base}.log")
        # Looked up again before every run: a recreated container keeps its name, not its id.
        cgroups = Cgroups.of(self.containers)
        with open(log_path, "w") as log, ContainerSampler(cgroups) as containers:
            proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                cmd,
                env=run_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HERE.parent,
                start_new_session=True,
            )
            cpu = ProcessTreeSampler(proc.pid)
            cpu.start()
            cg0 = cgroups.cpu_seconds()
            try:
                code = proc.wait(timeout=runtime + 60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
                # Locust runs in its own session (so Ctrl-C reaches only us): stop it ourselves.
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                if isinstance(exc, KeyboardInterrupt):
                    raise
            finally:
                cg1 = cgroups.cpu_seconds()
                cpu.stop()
        measured = [json.loads(p.read_text()) for p in sorted(measure_dir.glob("measure-*.json"))]
        window = report.merge_times([m["window"] for m in measured])
        whole = report.merge_times([m["whole"] for m in measured])
        errors: dict[str, int] = {}
        for m in measured:
            for k, v in m["errors"].items():
                errors[k] = errors.get(k, 0) + v
        container_cpu = {n: cg1[n] - cg0[n] for n in cg1 if n in cg0}
        # What else ran on the machine meanwhile: busy cores not explained by the generator,
        # the userland proxies, the Docker engine or this project's containers.
        cores = os.cpu_count() or 1
        explained = (
            cpu.cores + cpu.proxy_cores + cpu.engine_cores + sum(container_cpu.values()) / cpu.wall
        )
        other = max(0.0, cpu.machine_busy * cores - explained) if cgroups.groups else None
        result = {
            "other_cores": None if other is None else round(other, 3),
            "processes": processes,
            "users": users,
            "locust_exit": code,
            # Successful responses only: a refused connection fails in microseconds, and
            # counting it would turn an outage into record throughput.
            "rps": (window["requests"] - window["failures"]) / duration if duration else 0.0,
            "requests": window["requests"],
            "failures": window["failures"],
            "p50": report.percentile(window["times"], 0.50),
            "p95": report.percentile(window["times"], 0.95),
            "p99": report.percentile(window["times"], 0.99),
            "requests_total": whole["requests"],
            "failures_total": whole["failures"],
            "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10]),
            "gen_cores": round(cpu.cores, 3),
            "gen_cpu_seconds": round(cpu.cpu_seconds, 2),
            "machine_busy": round(cpu.machine_busy, 3),
            "proxy_cores": round(cpu.proxy_cores, 3),
            "proxy_cpu_s": round(cpu.proxy_cpu_seconds, 4),
            "engine_cores": round(cpu.engine_cores, 3),
            "engine_cpu_s": round(cpu.engine_cpu_seconds, 4),
            # Over the whole run, as requests_total: the report divides one by the other.
            "container_cpu_s": {n: round(v, 4) for n, v in container_cpu.items()},
            "container_cores": {n: round(v / cpu.wall, 3) for n, v in container_cpu.items()},
            "containers": containers.peaks,
            "log": log_path.name,
        }
        unread = sorted(set(self.containers) - container_cpu.keys())
        if unread:  # gone or replaced during the run: its CPU is missing from the figures
            result["containers_unread"] = unread
        if not measured:
            tail = log_path.read_text()[-2000:]
            result["error"] = f"Locust wrote no measurements (exit {code}); log tail:\n{tail}"
        if step:
            result["seconds"] = _merge_seconds(measured)
        return result

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"


def _merge_seconds(measured: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    seconds: dict[int, list[dict[str, Any]]] = {}
    for m in measured:
        for k, tally in m.get("seconds", {}).items():
            seconds.setdefault(int(k), []).append(tally)
    return {k: report.merge_times(v) for k, v in sorted(seconds.items())}


# --- api accounts ------------------------------------------------------------------------


def make_accounts(url: str, count: int, login_rate: float) -> tuple[list[dict[str, Any]], str]:
    """Register and sign in `count` users (see _make_accounts); never raises."""
    try:
        return _make_accounts(url, count, login_rate)
    except (requests.RequestException, ValueError, KeyError) as exc:
        return [], f"{type(exc).__name__}: {exc}"


def _make_accounts(url: str, count: int, login_rate: float) -> tuple[list[dict[str, Any]], str]:
    """Register `count` throwaway users on the target and sign each in once.

    Logins are paced below nginx's per-address limit (10/s, burst 20) and a 429 waits and
    retries, so the measured runs start with valid tokens and never trip the limiter.
    """
    session = requests.Session()
    accounts = []
    interval = 1 / 5.0
    for _ in range(count):
        username = f"lt-{uuid.uuid4().hex[:16]}"
        password = uuid.uuid4().hex
        body = {"username": username, "password": password}
        r = session.post(f"{url}/api/auth/register", json=body, timeout=30)
        if r.status_code != 201:
            return accounts, f"register answered {r.status_code}: {r.text[:200]}"
        for _attempt in range(10):
            time.sleep(interval)
            r = session.post(f"{url}/api/auth/login", json=body, timeout=30)
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("Retry-After", "1") or 1))
        if r.status_code != 200:
            return accounts, f"login answered {r.status_code}: {r.text[:200]}"
        data = r.json()
        accounts.append(
            {
                "username": username,
                "password": password,
                "access_token": data["access_token"],
                "expires_at": time.time() + float(data.get("expires_in", 900)),
            }
        )
    return accounts, ""


# --- the comparison ----------------------------------------------------------------------


def run_comparison(
    cfg: Config, runner: Runner, targets: list[dict[str, Any]], results: dict[str, Any]
) -> None:
    live = [t for t in targets if not t.get("skipped")]
    ceilings = {int(k): v for k, v in results["ceiling"].get("rps", {}).items()}
    max_procs = max(ceilings, default=1)
    total = len(cfg.scenarios) * len(live) * cfg.rounds
    per_run = cfg.warmup + cfg.duration + 1.5
    print(
        f"[{runner.elapsed()}] {total} runs of about {per_run:.0f} s "
        f"({len(cfg.scenarios)} scenarios x {len(live)} targets x {cfg.rounds} rounds): "
        f"about {total * per_run / 60:.1f} min",
        flush=True,
    )
    accounts_dir = tempfile.TemporaryDirectory(prefix="loadtest-accounts-")
    accounts: dict[str, list[dict[str, Any]]] = {}
    done = 0
    try:
        for scenario in cfg.scenarios:
            procs = int(cfg.processes) if cfg.processes.isdigit() else 1
            env: dict[str, dict[str, str]] = {t["name"]: {} for t in live}
            if scenario == "api":
                for t in live:
                    path = Path(accounts_dir.name) / f"{t['name']}.json"
                    if t["name"] not in accounts:
                        print(
                            f"[{runner.elapsed()}] api: registering {cfg.api_accounts} "
                            f"users on {t['name']}",
                            flush=True,
                        )
                        accs, err = make_accounts(t["url"], cfg.api_accounts, cfg.login_rate)
                        if err:
                            results["notes"].append(
                                f"api on {t['name']}: account set-up failed: {err}"
                            )
                            print(f"  account set-up on {t['name']} failed: {err}", flush=True)
                        accounts[t["name"]] = accs
                    if accounts[t["name"]]:
                        path.write_text(json.dumps(accounts[t["name"]]))
                        env[t["name"]] = {"LOADTEST_API_ACCOUNTS": str(path)}
            rnd = 1
            while rnd <= cfg.rounds:
                order = live if rnd % 2 else list(reversed(live))
                redo = False
                for t in order:
                    prefix = f"{scenario}-{t['name']}-r{rnd}"
                    res = runner.locust(
                        SCENARIOS[scenario],
                        t["url"],
                        prefix,
                        procs,
                        cfg.users,
                        cfg.warmup,
                        cfg.duration,
                        env=env[t["name"]],
                    )
                    res.update(scenario=scenario, target=t["name"], round=rnd, prefix=prefix)
                    ceiling = ceilings.get(procs)
                    limited = bool(ceiling and res["rps"] > report.GEN_LIMIT * ceiling)
                    # One process is the limit: move this scenario to more Locust processes
                    # when they raise the ceiling, and measure its rounds again.
                    if (
                        limited
                        and cfg.processes == "auto"
                        and not res["failures_total"]
                        and procs < max_procs
                        and ceilings[max_procs] > 1.15 * ceilings[procs]
                    ):
                        print(
                            f"  {prefix}: {res['rps']:,.0f} req/s is over "
                            f"{report.GEN_LIMIT:.0%} of the "
                            f"1-process ceiling; again with {max_procs} processes",
                            flush=True,
                        )
                        results["notes"].append(
                            f"{scenario}: one Locust process was the limit "
                            f"({res['rps']:,.0f} req/s); "
                            f"measured with {max_procs} processes."
                        )
                        results["runs"] = [r for r in results["runs"] if r["scenario"] != scenario]
                        procs = max_procs
                        redo = True
                        break
                    results["runs"].append(res)
                    done += 1
                    # Most requests failed and the target no longer answers: it went away
                    # (stopped, its port unpublished). Stop instead of timing an outage.
                    if (
                        res["failures_total"] > 0.5 * max(1, res["requests_total"])
                        and probe(t["url"])[0]
                    ):
                        why = f"{t['name']} ({t['url']}) stopped answering during {prefix}"
                        results["notes"].append(f"Stopped early: {why}.")
                        print(f"loadtest: stopping, {why}", flush=True)
                        return
                    mark = " ⚠ generator-limited" if limited else ""
                    err = f"  ERROR: {res['error']}" if res.get("error") else ""
                    print(
                        f"[{runner.elapsed()}] {done}/{total} {scenario:<9} {t['name']:<16} "
                        f"round {rnd}/{cfg.rounds}: {res['rps']:>8,.0f} req/s  "
                        f"p50 {report.fmt_ms(res['p50'])}  p99 {report.fmt_ms(res['p99'])} ms  "
                        f"failures {res['failures_total']}  "
                        f"generator {res['gen_cores']:.2f} cores{mark}{err}",
                        flush=True,
                    )
                    if res["errors"]:
                        for k, v in list(res["errors"].items())[:3]:
                            print(f"    {v} x {k}", flush=True)
                if redo:
                    done = len(results["runs"])
                    rnd = 1
                    continue
                rnd += 1
    finally:
        accounts_dir.cleanup()


def step_knee(per_second: dict[int, dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Per step (first second left out): users, requests/s, p50, p99, failures; and the knee."""
    steps = []
    n_steps = -(-cfg.step_max // cfg.step_users)
    for i in range(n_steps):
        lo = int(i * cfg.step_time) + 1
        hi = int((i + 1) * cfg.step_time)
        tallies = [per_second[s] for s in range(lo, hi) if s in per_second]
        if not tallies:
            break  # the shape stopped early, past the knee
        merged = report.merge_times(tallies)
        # Failures count for the whole step, spawning second included.
        fails = sum(per_second[s]["failures"] for s in range(lo - 1, hi) if s in per_second)
        steps.append(
            {
                "users": min(cfg.step_max, (i + 1) * cfg.step_users),
                "rps": merged["requests"] / max(1, hi - lo),
                "p50": report.percentile(merged["times"], 0.5),
                "p99": report.percentile(merged["times"], 0.99),
                "failures": fails,
            }
        )
    knee = None
    best = None
    for s in steps:
        why = []
        if s["p99"] is not None and s["p99"] > report.KNEE_P99_MS:
            why.append(f"p99 {s['p99']:g} ms")
        if s["failures"]:
            why.append(f"{s['failures']} failed")
        if why:
            knee = {"users": s["users"], "why": ", ".join(why)}
            break
        if best is None or s["rps"] > best["rps"]:
            best = {"users": s["users"], "rps": s["rps"]}
    return {"per_step": steps, "knee": knee, "best": best}


def run_steps(
    cfg: Config, runner: Runner, targets: list[dict[str, Any]], results: dict[str, Any]
) -> None:
    ceilings = {int(k): v for k, v in results["ceiling"].get("rps", {}).items()}
    procs = int(cfg.processes) if cfg.processes.isdigit() else 1
    if (
        cfg.processes == "auto"
        and len(ceilings) > 1
        and max(ceilings.values()) > 1.15 * ceilings.get(1, 0)
    ):
        procs = max(ceilings, key=ceilings.get)
    n_steps = -(-cfg.step_max // cfg.step_users)
    per = n_steps * cfg.step_time
    live = [t for t in targets if not t.get("skipped")]
    print(
        f"[{runner.elapsed()}] step load: {len(cfg.scenarios) * len(live)} runs of {per:.0f} s "
        f"({n_steps} steps of {cfg.step_users} users, {cfg.step_time:g} s each)",
        flush=True,
    )
    accounts_dir = tempfile.TemporaryDirectory(prefix="loadtest-accounts-")
    try:
        for scenario in cfg.scenarios:
            for t in targets:
                if t.get("skipped"):
                    results["steps"].append(
                        {"scenario": scenario, "target": t["name"], "skipped": t["skipped"]}
                    )
                    continue
                env = {}
                if scenario == "api":
                    accs, err = make_accounts(t["url"], cfg.api_accounts, cfg.login_rate)
                    if err:
                        results["notes"].append(f"api on {t['name']}: account set-up failed: {err}")
                    if accs:
                        path = Path(accounts_dir.name) / f"{t['name']}.json"
                        path.write_text(json.dumps(accs))
                        env["LOADTEST_API_ACCOUNTS"] = str(path)
                prefix = f"step-{scenario}-{t['name']}"
                res = runner.locust(
                    SCENARIOS[scenario], t["url"], prefix, procs, 0, 0, 0, env=env, step=True
                )
                entry = {
                    "scenario": scenario,
                    "target": t["name"],
                    "processes": procs,
                    "prefix": prefix,
                }
                entry.update(step_knee(res["seconds"], cfg))
                entry["failures"] = res["failures_total"]
                entry["containers"] = res["containers"]
                entry["gen_cores"] = res["gen_cores"]
                results["steps"].append(entry)
                knee = entry["knee"]
                print(
                    f"[{runner.elapsed()}] {scenario} · {t['name']}: knee "
                    + (
                        f"at {knee['users']} users ({knee['why']})"
                        if knee
                        else f"not reached by {cfg.step_max} users"
                    ),
                    flush=True,
                )
    finally:
        accounts_dir.cleanup()


def run_profiles(
    cfg: Config, runner: Runner, targets: list[dict[str, Any]], results: dict[str, Any]
) -> None:
    """One extra, unmeasured run per scenario and target with py-spy on the server process."""
    pyspy = profile.find_pyspy()
    if not pyspy:
        results["notes"].append("PROFILE=1 but py-spy was not found (PATH or PYSPY): no profiles.")
        print("  PROFILE=1: py-spy not found (PATH or PYSPY); skipping profiles", flush=True)
        return
    live = [t for t in targets if not t.get("skipped") and t["name"] in profile.SERVICE]
    accounts_dir = tempfile.TemporaryDirectory(prefix="loadtest-accounts-")
    try:
        for scenario in cfg.scenarios:
            for t in live:
                pid, container = profile.container_pid(
                    cfg.compose_project, profile.SERVICE[t["name"]]
                )
                if not pid:
                    results["notes"].append(f"profile {scenario}/{t['name']}: no container found")
                    continue
                env = {}
                if scenario == "api":
                    accs, _err = make_accounts(t["url"], cfg.api_accounts, cfg.login_rate)
                    if accs:
                        path = Path(accounts_dir.name) / f"{t['name']}.json"
                        path.write_text(json.dumps(accs))
                        env["LOADTEST_API_ACCOUNTS"] = str(path)
                prefix = f"profile-{scenario}-{t['name']}"
                raw = runner.out_dir / f"{prefix}.pyspy.txt"
                spy = profile.PySpy(pyspy, pid, raw, cfg.warmup + 0.5, cfg.duration)
                with spy:
                    res = runner.locust(
                        SCENARIOS[scenario],
                        t["url"],
                        prefix,
                        1,
                        cfg.users,
                        cfg.warmup,
                        cfg.duration,
                        env=env,
                    )
                entry = {"scenario": scenario, "target": t["name"], "container": container}
                if spy.error or not raw.exists():
                    entry["error"] = spy.error or "py-spy wrote nothing"
                else:
                    summary = runner.out_dir / f"{prefix}.top.txt"
                    summary.write_text(profile.summarize(raw))
                    entry["summary"] = summary.name
                    entry["raw"] = raw.name
                entry["rps"] = res["rps"]
                results["profiles"].append(entry)
                print(
                    f"[{runner.elapsed()}] profile {scenario} · {t['name']} ({container}): "
                    + (entry.get("summary") or f"failed: {entry.get('error')}"),
                    flush=True,
                )
    finally:
        accounts_dir.cleanup()


def measure_ceiling(cfg: Config, runner: Runner, results: dict[str, Any]) -> None:
    parts = urlsplit(cfg.ceiling_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path or "/"
    why, _ = probe(origin, path)
    if why:
        results["ceiling"] = {"reason": f"{cfg.ceiling_url}: {why}"}
        print(f"[{runner.elapsed()}] generator ceiling not measured: {why}", flush=True)
        return
    counts = [1]
    cores = os.cpu_count() or 1
    if cfg.processes.isdigit():
        counts = sorted({1, int(cfg.processes)})
    elif cores > 1:
        counts.append(min(cores, 4))
    rps = {}
    for n in counts:
        res = runner.locust(
            "CeilingUser",
            origin,
            f"ceiling-p{n}",
            n,
            cfg.users,
            1.0,
            cfg.ceiling_duration,
            env={"LOADTEST_CEILING_PATH": path},
        )
        rps[str(n)] = res["rps"]
        print(
            f"[{runner.elapsed()}] generator ceiling, {n} process{'es' if n > 1 else ''}: "
            f"{res['rps']:,.0f} req/s (generator {res['gen_cores']:.2f} cores, "
            f"failures {res['failures_total']})",
            flush=True,
        )
    results["ceiling"] = {"rps": rps, "url": cfg.ceiling_url}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    started = datetime.now(UTC)
    out_dir = Path(cfg.results_dir) / started.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"loadtest: writing {out_dir}", flush=True)

    targets = targets_for(cfg)
    for t in targets:
        why, headers = probe(t["url"])
        if why:
            t["skipped"] = why
            print(f"  {t['name']:<16} {t['url']}: SKIPPED, {why}", flush=True)
        else:
            served = ", ".join(
                f"{k}: {headers[k]}" for k in ("Server", "Connection") if k in headers
            )
            t["server"] = f"({served})" if served else ""
            print(f"  {t['name']:<16} {t['url']}: ok {t['server']}", flush=True)
    load1 = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load1 > 0.5 * cores:
        busy_note = (
            f"The machine was busy before the run (load average {load1:.1f} on {cores} cores): "
            "other work competed with the servers and the generator, so figures are noisy."
        )
        print(f"  WARNING: {busy_note}", flush=True)
    else:
        busy_note = ""
    missing = [t for t in targets if t["primary"] and t.get("skipped")]
    if missing:
        names = ", ".join(f"{t['name']} ({t['url']}: {t['skipped']})" for t in missing)
        print(f"loadtest: cannot compare, {names}. Is the stack up (`make up`)?", file=sys.stderr)
        return 2

    if cfg.docker_stats:
        containers, why_not = compose_containers(cfg.compose_project)
    else:
        containers, why_not = [], "DOCKER_STATS=0"
    cgroups = Cgroups.of(containers)
    if containers and not cgroups.groups:
        containers, why_not = [], f"no container's cgroup found under {CGROUP_ROOT}"
    docker: dict[str, Any] = {"containers": containers, "services": cgroups.services}
    if why_not:
        docker["reason"] = why_not
        print(f"  containers: not sampled ({why_not})", flush=True)
    else:
        with ContainerSampler(cgroups) as idle:
            time.sleep(1.0)
        docker["idle"] = idle.peaks
        print(f"  containers: reading the cgroups of {', '.join(containers)}", flush=True)

    results: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(
            shlex.quote(a)
            for a in ["python", "-m", "loadtest.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": asdict(cfg),
        "machine": machine_info(),
        "targets": targets,
        "docker": docker,
        "ceiling": {},
        "runs": [],
        "steps": [],
        "profiles": [],
        "notes": [busy_note] if busy_note else [],
    }
    runner = Runner(cfg, out_dir, containers)
    try:
        measure_ceiling(cfg, runner, results)
        if cfg.shape == "step":
            run_steps(cfg, runner, targets, results)
        else:
            run_comparison(cfg, runner, targets, results)
            if cfg.profile:
                run_profiles(cfg, runner, targets, results)
    except KeyboardInterrupt:
        results["notes"].append("Interrupted: the figures cover only the runs that finished.")
        print("\nloadtest: interrupted, writing what was measured", flush=True)
    finally:
        results["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        results["elapsed_s"] = round(time.monotonic() - runner.started, 1)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        table = report.write_report(out_dir, results)
    print(f"\nloadtest: {out_dir}/report.md ({runner.elapsed()} elapsed)\n", flush=True)
    print(table, flush=True)
    broken = [r for r in results["runs"] if r.get("error")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
