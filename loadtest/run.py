"""The comparison runner behind `make loadtest`.

    python -m loadtest.run                      # defaults: under 10 minutes on 2 cores
    SCENARIOS=json,db ROUNDS=5 python -m loadtest.run
    SMOKE=1 python -m loadtest.run              # a few seconds per scenario (CI)
    LOCUSTFILE=examples/microblog/locustfile.py python -m loadtest.run   # your own scenarios
    SHAPE=step SCENARIOS=json python -m loadtest.run   # find each target's knee

Every setting is an environment variable and the same-named flag (`--users 20`); see
loadtest/README.md. It writes loadtest/results/<UTC timestamp>/ and ends with the table.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from loadtest import report
from loadtest.ceiling import measure_ceiling
from loadtest.comparison import run_comparison
from loadtest.config import REALTIME, parse_config
from loadtest.driver import Driver, watched_containers
from loadtest.machine import busy_note, machine_info
from loadtest.profile import run_profiles
from loadtest.prometheus import add_server_latency
from loadtest.realtime import run_realtime
from loadtest.results import Results
from loadtest.steps import run_steps
from loadtest.targets import probe_all, targets_for


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_config(args, __doc__)
    started = datetime.now(UTC)
    out_dir = Path(cfg.results_dir) / started.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"loadtest: writing {out_dir}", flush=True)
    if cfg.locustfile:
        print(f"  scenarios from {cfg.locustfile}: {', '.join(cfg.scenarios)}", flush=True)

    targets = targets_for(cfg)
    probe_all(cfg, targets)
    busy = busy_note()
    if busy:
        print(f"  WARNING: {busy}", flush=True)
    missing = [t for t in targets if t.primary and t.skipped]
    if missing:
        names = ", ".join(f"{t.name} ({t.url}: {t.skipped})" for t in missing)
        print(f"loadtest: cannot compare, {names}. Is the stack up (`make up`)?", file=sys.stderr)
        return 2

    docker = watched_containers(cfg)
    results = Results(
        started=started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        command=" ".join(shlex.quote(a) for a in ["python", "-m", "loadtest.run", *args]),
        config=cfg,
        machine=machine_info(),
        targets=targets,
        docker=docker,
        notes=[busy] if busy else [],
    )
    driver = Driver(cfg, out_dir, docker.containers)
    try:
        results.ceiling = measure_ceiling(cfg, driver)
        if cfg.shape == "step":
            run_steps(cfg, driver, targets, results)
        else:
            run_comparison(cfg, driver, targets, results)
            # Before realtime: each stack run's range reaches one scrape past its end.
            add_server_latency(cfg.prometheus_url, results.runs, results.notes, driver.log)
            if REALTIME in cfg.scenarios:
                run_realtime(cfg, driver, targets, results)
            if cfg.profile:
                run_profiles(cfg, driver, targets, results)
    except KeyboardInterrupt:
        results.notes.append("Interrupted: the figures cover only the runs that finished.")
        print("\nloadtest: interrupted, writing what was measured", flush=True)
    finally:
        results.finished = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        results.elapsed_s = round(time.monotonic() - driver.started, 1)
        doc = results.to_json()
        (out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=str))
        table = report.write_report(out_dir, doc)
    print(f"\nloadtest: {out_dir}/report.md ({driver.elapsed()} elapsed)\n", flush=True)
    print(table, flush=True)
    return 1 if any(r.error for r in results.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
