"""The generator's ceiling: the most requests/s Locust drives on this machine, against a
constant that nginx answers itself, with one process and with one per core (at most 4)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from loadtest.config import LOCUSTFILE, Config
from loadtest.driver import Driver
from loadtest.results import Ceiling
from loadtest.targets import probe


def measure_ceiling(cfg: Config, driver: Driver) -> Ceiling:
    """Measure the ceiling, or say why it could not be (nginx's constant did not answer)."""
    parts = urlsplit(cfg.ceiling_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path or "/"
    why, _ = probe(origin, path)
    if why:
        driver.log(f"generator ceiling not measured: {why}")
        return Ceiling(reason=f"{cfg.ceiling_url}: {why}")
    counts = [1]
    cores = os.cpu_count() or 1
    if cfg.processes.isdigit():
        counts = sorted({1, int(cfg.processes)})
    elif cores > 1:
        counts.append(min(cores, 4))
    rps = {}
    for n in counts:
        m = driver.run(
            "CeilingUser",
            origin,
            f"ceiling-p{n}",
            n,
            cfg.users,
            1.0,
            cfg.ceiling_duration,
            env={"LOADTEST_CEILING_PATH": path},
            files=[LOCUSTFILE],  # CeilingUser is the demo locustfile's, whatever the scenarios
        )
        rps[n] = m.rps
        driver.log(
            f"generator ceiling, {n} process{'es' if n > 1 else ''}: "
            f"{m.rps:,.0f} req/s (generator {m.gen_cores:.2f} cores, "
            f"failures {m.failures_total})"
        )
    return Ceiling(rps=rps, url=cfg.ceiling_url)
