"""The report's charts (matplotlib, PNG): throughput, latency and, in step mode, the steps."""

from __future__ import annotations

from pathlib import Path

from loadtest.report.format import DASH
from loadtest.report.summary import Doc, Summary
from loadtest.stats import KNEE_P99_MS


def charts(out_dir: Path, results: Doc, summary: Summary) -> None:
    """throughput.png and latency.png from the summary; stepload.png from the steps."""
    # Imported here: the report is written before the charts, and a broken matplotlib
    # must not cost it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t["name"] for t in results["targets"] if not t.get("skipped")]
    colors = {n: f"C{i}" for i, n in enumerate(targets)}
    if summary:
        scenarios = list(summary)
        cols = min(4, len(scenarios))
        rows = -(-len(scenarios) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, scenario in zip(axes.flat, scenarios, strict=False):
            names = [n for n in targets if summary[scenario].get(n, {}).get("rps")]
            meds = [summary[scenario][n]["rps"][0] for n in names]
            err = [
                [m - summary[scenario][n]["rps"][1] for n, m in zip(names, meds, strict=True)],
                [summary[scenario][n]["rps"][2] - m for n, m in zip(names, meds, strict=True)],
            ]
            ax.bar(names, meds, yerr=err, capsize=3, color=[colors[n] for n in names])
            for i, m in enumerate(meds):
                ax.annotate(f"{m:,.0f}", (i, m), ha="center", va="bottom", fontsize=7)
            ax.set_title(scenario)
            ax.set_ylabel("requests/s")
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        for ax in list(axes.flat)[len(scenarios) :]:
            ax.set_visible(False)
        fig.suptitle(f"Throughput (median over rounds, min{DASH}max)")
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, scenario in zip(axes.flat, scenarios, strict=False):
            names = [n for n in targets if summary[scenario].get(n, {}).get("p50")]
            width = 0.8 / max(1, len(names))
            for i, n in enumerate(names):
                vals = [summary[scenario][n][p][0] for p in ("p50", "p95", "p99")]
                xs = [j + i * width for j in range(3)]
                ax.bar(xs, vals, width=width, color=colors[n], label=n)
                for x, v in zip(xs, vals, strict=True):
                    ax.annotate(f"{v:g}", (x, v), ha="center", va="bottom", fontsize=6)
            ax.set_xticks(
                [j + width * (len(names) - 1) / 2 for j in range(3)], ["p50", "p95", "p99"]
            )
            ax.set_title(scenario)
            ax.set_ylabel("ms")
        for ax in list(axes.flat)[len(scenarios) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower right", fontsize=8)
        fig.suptitle("Latency percentiles (median over rounds)")
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=110)
        plt.close(fig)

    steps = [s for s in results.get("steps", []) if not s.get("skipped")]
    if steps:
        scenarios = list(dict.fromkeys(s["scenario"] for s in steps))
        fig, axes = plt.subplots(len(scenarios), 2, figsize=(9, 3 * len(scenarios)), squeeze=False)
        for (ax_rps, ax_p99), scenario in zip(axes, scenarios, strict=True):
            for entry in (s for s in steps if s["scenario"] == scenario):
                users = [p["users"] for p in entry["per_step"]]
                color = colors.get(entry["target"])
                ax_rps.plot(
                    users,
                    [p["rps"] for p in entry["per_step"]],
                    "o-",
                    color=color,
                    label=entry["target"],
                )
                ax_p99.plot(
                    users,
                    [p["p99"] for p in entry["per_step"]],
                    "o-",
                    color=color,
                    label=entry["target"],
                )
            ax_p99.axhline(KNEE_P99_MS, color="grey", linestyle="--", linewidth=1)
            ax_rps.set_title(f"{scenario}: requests/s")
            ax_p99.set_title(f"{scenario}: p99 ms")
            ax_p99.set_yscale("log")
            for ax in (ax_rps, ax_p99):
                ax.set_xlabel("users")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "stepload.png", dpi=110)
        plt.close(fig)
