"""SHAPE=step: each scenario and target under a growing number of users, to find its knee.

Locust runs the shape in stepload.py and every process counts its requests per second; the knee
is computed here from those exact counts, not from Locust's live statistics.
"""

from __future__ import annotations

from typing import TypedDict

from loadtest.accounts import Accounts
from loadtest.config import Config
from loadtest.driver import Driver
from loadtest.results import Best, Knee, Results, SkippedStep, StepFigures, StepRun, Target
from loadtest.stats import KNEE_P99_MS, Tally, merge_times, percentile


class KneeSearch(TypedDict):
    per_step: list[StepFigures]
    knee: Knee | None
    best: Best | None


def step_knee(per_second: dict[int, Tally], cfg: Config) -> KneeSearch:
    """Per step (first second left out): users, requests/s, p50, p99, failures; and the knee."""
    steps: list[StepFigures] = []
    n_steps = -(-cfg.step_max // cfg.step_users)
    for i in range(n_steps):
        lo = int(i * cfg.step_time) + 1
        hi = int((i + 1) * cfg.step_time)
        tallies = [per_second[s] for s in range(lo, hi) if s in per_second]
        if not tallies:
            break  # the shape stopped early, past the knee
        merged = merge_times(tallies)
        # Failures count for the whole step, spawning second included.
        fails = sum(per_second[s]["failures"] for s in range(lo - 1, hi) if s in per_second)
        steps.append(
            {
                "users": min(cfg.step_max, (i + 1) * cfg.step_users),
                "rps": merged["requests"] / max(1, hi - lo),
                "p50": percentile(merged["times"], 0.5),
                "p99": percentile(merged["times"], 0.99),
                "failures": fails,
            }
        )
    knee: Knee | None = None
    best: Best | None = None
    for s in steps:
        why = []
        if s["p99"] is not None and s["p99"] > KNEE_P99_MS:
            why.append(f"p99 {s['p99']:g} ms")
        if s["failures"]:
            why.append(f"{s['failures']} failed")
        if why:
            knee = {"users": s["users"], "why": ", ".join(why)}
            break
        if best is None or s["rps"] > best["rps"]:
            best = {"users": s["users"], "rps": s["rps"]}
    return {"per_step": steps, "knee": knee, "best": best}


def run_steps(cfg: Config, driver: Driver, targets: list[Target], results: Results) -> None:
    """Step-load every scenario on every target that answered; find each one's knee."""
    ceilings = results.ceiling.rps or {}
    procs = int(cfg.processes) if cfg.processes.isdigit() else 1
    if (
        cfg.processes == "auto"
        and len(ceilings) > 1
        and max(ceilings.values()) > 1.15 * ceilings.get(1, 0)
    ):
        procs = max(ceilings, key=ceilings.__getitem__)
    n_steps = -(-cfg.step_max // cfg.step_users)
    per = n_steps * cfg.step_time
    live = [t for t in targets if not t.skipped]
    driver.log(
        f"step load: {len(cfg.scenarios) * len(live)} runs of {per:.0f} s "
        f"({n_steps} steps of {cfg.step_users} users, {cfg.step_time:g} s each)"
    )
    with Accounts(cfg, results.notes, driver.log) as accounts:
        for scenario in [s for s in cfg.scenarios if s in cfg.classes]:
            for t in targets:
                if t.skipped:
                    results.steps.append(
                        SkippedStep(scenario=scenario, target=t.name, skipped=t.skipped)
                    )
                    continue
                env = accounts.env(t) if cfg.needs_accounts(scenario) else {}
                prefix = f"step-{scenario}-{t.name}"
                m, per_second = driver.step(cfg.classes[scenario], t.url, prefix, procs, env)
                entry = StepRun(
                    scenario=scenario,
                    target=t.name,
                    processes=procs,
                    prefix=prefix,
                    **step_knee(per_second, cfg),
                    failures=m.failures_total,
                    containers=m.containers,
                    gen_cores=m.gen_cores,
                )
                results.steps.append(entry)
                knee = entry.knee
                driver.log(
                    f"{scenario} · {t.name}: knee "
                    + (
                        f"at {knee['users']} users ({knee['why']})"
                        if knee
                        else f"not reached by {cfg.step_max} users"
                    )
                )
