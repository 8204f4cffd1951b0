"""The comparison: every scenario, round by round, against every target that answered.

The target order is reversed every other round, so drift on a noisy machine does not always
favour the same target. A scenario that one Locust process cannot drive (PROCESSES=auto) is
measured again, all its rounds, with as many processes as raised the ceiling.
"""

from __future__ import annotations

import time

from loadtest.accounts import Accounts
from loadtest.appcost import measure_app_cost
from loadtest.config import Config
from loadtest.driver import Driver
from loadtest.report.format import fmt_ms
from loadtest.report.summary import GEN_LIMIT
from loadtest.results import Results, Run, Target
from loadtest.targets import probe_target


def run_comparison(cfg: Config, driver: Driver, targets: list[Target], results: Results) -> None:
    """Measure every scenario, round by round, on every target that answered."""
    live = [t for t in targets if not t.skipped]
    scenarios = [s for s in cfg.scenarios if s in cfg.classes]
    total = len(scenarios) * len(live) * cfg.rounds
    per_run = cfg.warmup + cfg.duration + 1.5
    driver.log(
        f"{total} runs of about {per_run:.0f} s "
        f"({len(scenarios)} scenarios x {len(live)} targets x {cfg.rounds} rounds): "
        f"about {total * per_run / 60:.1f} min"
    )
    with Accounts(cfg, results.notes, driver.log) as accounts:
        for scenario in scenarios:
            env = {t.name: accounts.env(t) if cfg.needs_accounts(scenario) else {} for t in live}
            _app_cost(cfg, driver, scenario, results)
            if not _rounds(cfg, driver, scenario, live, env, results, total):
                return


def _app_cost(cfg: Config, driver: Driver, scenario: str, results: Results) -> None:
    """The app's own CPU per call of this scenario, in-process in a replica, just before its
    rounds: the stack is idle then, and no run's CPU counts it."""
    cost = measure_app_cost(cfg, scenario)
    if cost is None:
        return
    results.app_cost[scenario] = cost
    if cost.error:
        results.notes.append(
            f"{scenario}: the app's in-process cost was not measured: {cost.error}"
        )
        driver.log(f"{scenario}: app in-process not measured: {cost.error}")
        return
    failed = sum(n for s, n in (cost.statuses or {}).items() if int(s) >= 400)
    if failed:
        results.notes.append(
            f"{scenario}: {failed:,} of the {cost.calls:,} in-process calls answered 400 or more "
            f"({cost.statuses}): its app cost is of those answers."
        )
    driver.log(
        f"{scenario}: app in-process {fmt_ms(cost.ms)} ms CPU per call "
        f"({cost.calls:,} calls in {cost.container})"
    )


def _rounds(
    cfg: Config,
    driver: Driver,
    scenario: str,
    live: list[Target],
    env: dict[str, dict[str, str]],
    results: Results,
    total: int,
) -> bool:
    """Every round of one scenario; False when a target stopped answering."""
    ceilings = results.ceiling.rps or {}
    max_procs = max(ceilings, default=1)
    procs = int(cfg.processes) if cfg.processes.isdigit() else 1
    rnd = 1
    while rnd <= cfg.rounds:
        order = live if rnd % 2 else list(reversed(live))
        redo = False
        for t in order:
            prefix = f"{scenario}-{t.name}-r{rnd}"
            wall_start = time.time()
            m = driver.run(
                cfg.classes[scenario],
                t.url,
                prefix,
                procs,
                cfg.users,
                cfg.warmup,
                cfg.duration,
                env=env[t.name],
            )
            wall_end = time.time()
            run = Run(**vars(m), scenario=scenario, target=t.name, round=rnd, prefix=prefix)
            run.wall_start, run.wall_end = round(wall_start, 3), round(wall_end, 3)
            ceiling = ceilings.get(procs)
            limited = bool(ceiling and run.rps > GEN_LIMIT * ceiling)
            # One process is the limit: move this scenario to more Locust processes
            # when they raise the ceiling, and measure its rounds again.
            if (
                limited
                and cfg.processes == "auto"
                and not run.failures_total
                and procs < max_procs
                and ceilings[max_procs] > 1.15 * ceilings[procs]
            ):
                print(
                    f"  {prefix}: {run.rps:,.0f} req/s is over {GEN_LIMIT:.0%} of the "
                    f"1-process ceiling; again with {max_procs} processes",
                    flush=True,
                )
                results.notes.append(
                    f"{scenario}: one Locust process was the limit ({run.rps:,.0f} req/s); "
                    f"measured with {max_procs} processes."
                )
                results.runs = [r for r in results.runs if r.scenario != scenario]
                procs = max_procs
                redo = True
                break
            results.runs.append(run)
            # Most requests failed and the target no longer answers: it went away
            # (stopped, its port unpublished). Stop instead of timing an outage.
            mostly_failed = run.failures_total > 0.5 * max(1, run.requests_total)
            if mostly_failed and probe_target(cfg, t.url)[0]:
                why = f"{t.name} ({t.url}) stopped answering during {prefix}"
                results.notes.append(f"Stopped early: {why}.")
                print(f"loadtest: stopping, {why}", flush=True)
                return False
            mark = " ⚠ generator-limited" if limited else ""
            err = f"  ERROR: {run.error}" if run.error else ""
            driver.log(
                f"{len(results.runs)}/{total} {scenario:<9} {t.name:<16} "
                f"round {rnd}/{cfg.rounds}: {run.rps:>8,.0f} req/s  "
                f"p50 {fmt_ms(run.p50)}  p99 {fmt_ms(run.p99)} ms  "
                f"failures {run.failures_total}  "
                f"generator {run.gen_cores:.2f} cores{mark}{err}"
            )
            for k, v in list(run.errors.items())[:3]:
                print(f"    {v} x {k}", flush=True)
        rnd = 1 if redo else rnd + 1
    return True
