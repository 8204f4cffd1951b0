"""One headless Locust run at a time, and its measurement: the requests its window counted and
what the generator, the containers, Docker and the rest of the machine spent meanwhile."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.cgroups import CGROUP_ROOT, Cgroups, ContainerSampler, compose_containers
from loadtest.config import HERE, LOCUSTFILE, Config
from loadtest.processes import ProcessTreeSampler
from loadtest.results import Docker, Measurement, NameFigures
from loadtest.stats import Tally, merge_seconds, merge_times, percentile

STEPFILE = HERE / "stepload.py"
# Loaded beside your own locustfile (LOCUSTFILE): it counts the measurement window, as the
# demo's locustfile does itself.
MEASUREFILE = HERE / "measure.py"


def watched_containers(cfg: Config) -> Docker:
    """The compose project's containers whose cgroups every run reads, with their idle peaks."""
    if cfg.docker_stats:
        containers, why_not = compose_containers(cfg.compose_project)
    else:
        containers, why_not = [], "DOCKER_STATS=0"
    cgroups = Cgroups.of(containers)
    if containers and not cgroups.groups:
        containers, why_not = [], f"no container's cgroup found under {CGROUP_ROOT}"
    docker = Docker(containers=containers, services=cgroups.services)
    if why_not:
        docker.reason = why_not
        print(f"  containers: not sampled ({why_not})", flush=True)
    else:
        with ContainerSampler(cgroups) as idle:
            time.sleep(1.0)
        docker.idle = idle.peaks
        print(f"  containers: reading the cgroups of {', '.join(containers)}", flush=True)
    return docker


class Driver:
    """Runs Locust for the run loops; results and logs go to `out_dir`."""

    def __init__(self, cfg: Config, out_dir: Path, containers: list[str]) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.containers = containers
        self.started = time.monotonic()

    def scenario_files(self) -> list[Path]:
        """The locustfiles a scenario's run loads: the demo's, or yours with the window."""
        if self.cfg.locustfile:
            return [Path(self.cfg.locustfile), MEASUREFILE]
        return [LOCUSTFILE]

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    def log(self, message: str) -> None:
        """Print a progress line, stamped with the time since the start."""
        print(f"[{self.elapsed()}] {message}", flush=True)

    def run(
        self,
        user_class: str,
        host: str,
        prefix: str,
        processes: int,
        users: int,
        warmup: float,
        duration: float,
        env: dict[str, str] | None = None,
        files: list[Path] | None = None,
    ) -> Measurement:
        """`users` users for the warm-up, then the measured window of `duration` seconds.

        `files`: the locustfiles to load (default: the scenarios', scenario_files)."""
        # Users start within half a second; the rest of the warm-up runs at full load.
        runtime = math.ceil(warmup + duration) + 1
        locustfiles = ",".join(str(f) for f in files or self.scenario_files())
        args = ["-f", locustfiles, "-u", str(users), "-r", str(users * 2)]
        args += ["-t", f"{runtime}s", "--reset-stats"]
        measurement, _ = self._launch(
            user_class, host, prefix, processes, users, warmup, duration, args, runtime, env or {}
        )
        return measurement

    def step(
        self, user_class: str, host: str, prefix: str, processes: int, env: dict[str, str]
    ) -> tuple[Measurement, dict[int, Tally]]:
        """The step shape (stepload.py) until one step past the knee; plus per-second counts."""
        cfg = self.cfg
        runtime = -(-cfg.step_max // cfg.step_users) * cfg.step_time
        step_env = {
            **env,
            "LOADTEST_PER_SECOND": "1",
            "LOADTEST_STEP_USERS": str(cfg.step_users),
            "LOADTEST_STEP_TIME": str(cfg.step_time),
            "LOADTEST_STEP_MAX": str(cfg.step_max),
        }
        args = ["-f", ",".join(str(f) for f in [*self.scenario_files(), STEPFILE])]
        measurement, measured = self._launch(
            user_class, host, prefix, processes, 0, 0, 0, args, runtime, step_env
        )
        return measurement, merge_seconds(measured)

    def _launch(
        self,
        user_class: str,
        host: str,
        prefix: str,
        processes: int,
        users: int,
        warmup: float,
        duration: float,
        args: list[str],
        runtime: float,
        env: dict[str, str],
    ) -> tuple[Measurement, list[dict[str, Any]]]:
        """Run Locust once and measure it; also each process's own counts (measure-*.json)."""
        measure_dir = self.out_dir / "measure" / prefix
        run_env = {
            **os.environ,
            "LOADTEST_MEASURE_DIR": str(measure_dir),
            "LOADTEST_WARMUP": str(warmup),
            "LOADTEST_DURATION": str(duration),
            "LOADTEST_PROCESSES": str(processes),
            "LOADTEST_TIMEOUT": str(self.cfg.timeout),
            "LOADTEST_LOGIN_RATE": str(self.cfg.login_rate),
            **env,
        }
        base = self.out_dir / prefix
        cmd = [sys.executable, "-m", "locust", "--headless", "--host", host, *args]
        cmd += [user_class, "--csv", str(base), "--html", f"{base}.html", "--json-file", str(base)]
        cmd += ["--only-summary", "--loglevel", "WARNING"]
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
        window = merge_times(m["window"] for m in measured)
        whole = merge_times(m["whole"] for m in measured)
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
        measurement = Measurement(
            other_cores=None if other is None else round(other, 3),
            processes=processes,
            users=users,
            locust_exit=code,
            # Successful responses only: a refused connection fails in microseconds, and
            # counting it would turn an outage into record throughput.
            rps=(window["requests"] - window["failures"]) / duration if duration else 0.0,
            requests=window["requests"],
            failures=window["failures"],
            p50=percentile(window["times"], 0.50),
            p95=percentile(window["times"], 0.95),
            p99=percentile(window["times"], 0.99),
            requests_total=whole["requests"],
            failures_total=whole["failures"],
            errors=dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10]),
            gen_cores=round(cpu.cores, 3),
            gen_cpu_seconds=round(cpu.cpu_seconds, 2),
            machine_busy=round(cpu.machine_busy, 3),
            proxy_cores=round(cpu.proxy_cores, 3),
            proxy_cpu_s=round(cpu.proxy_cpu_seconds, 4),
            engine_cores=round(cpu.engine_cores, 3),
            engine_cpu_s=round(cpu.engine_cpu_seconds, 4),
            # Over the whole run, as requests_total: the report divides one by the other.
            container_cpu_s={n: round(v, 4) for n, v in container_cpu.items()},
            container_cores={n: round(v / cpu.wall, 3) for n, v in container_cpu.items()},
            containers=containers.peaks,
            log=log_path.name,
        )
        names = by_name(measured, duration)
        if len(names) > 1:
            measurement.by_name = names
        unread = sorted(set(self.containers) - container_cpu.keys())
        if unread:  # gone or replaced during the run: its CPU is missing from the figures
            measurement.containers_unread = unread
        if not measured:
            tail = log_path.read_text()[-2000:]
            measurement.error = f"Locust wrote no measurements (exit {code}); log tail:\n{tail}"
        return measurement, measured


def by_name(measured: list[dict[str, Any]], duration: float) -> dict[str, NameFigures]:
    """The window's requests per Locust request name, added up over the processes."""
    names = sorted({name for m in measured for name in m.get("names", {})})
    out: dict[str, NameFigures] = {}
    for name in names:
        t = merge_times(m["names"][name] for m in measured if name in m.get("names", {}))
        out[name] = {
            "rps": round((t["requests"] - t["failures"]) / duration, 1) if duration else 0.0,
            "requests": t["requests"],
            "failures": t["failures"],
            "p50": percentile(t["times"], 0.50),
            "p95": percentile(t["times"], 0.95),
            "p99": percentile(t["times"], 0.99),
        }
    return out
