"""report.md, the charts and the console table, from results.json.

    python -m loadtest.report loadtest/results/<timestamp>    # rebuild a report

The runner calls `write_report` with the same figures it writes to results.json, so a rebuilt
report is the report. The prose is templates/report.md.j2, filled from `view.Report`.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from loadtest.report.charts import charts
from loadtest.report.format import console_table
from loadtest.report.summary import GEN_LIMIT, NOISY_CORES, Doc, summarize
from loadtest.report.view import Report, build
from loadtest.stats import KNEE_P99_MS

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 - markdown, not HTML
)
TEMPLATES.filters.update(g=lambda x: f"{x:g}", pct=lambda x: f"{x:.0%}")
TEMPLATES.globals.update(GEN_LIMIT=GEN_LIMIT, NOISY_CORES=NOISY_CORES, KNEE_P99_MS=KNEE_P99_MS)


def write_report(out_dir: Path, results: Doc) -> str:
    """Write report.md and the charts; return the console table."""
    summary = summarize(results) if results.get("runs") else {}
    report = build(out_dir, results, summary)
    (out_dir / "report.md").write_text(_render("report.md.j2", report))
    try:
        charts(out_dir, results, summary)
    except Exception as exc:  # a chart must not cost the report
        (out_dir / "charts-error.txt").write_text(repr(exc))
    if report.results and report.results.rows:
        return console_table(report.results.header, report.results.rows)
    if report.step_load:  # the knee table, without the steps
        return _render("knee.md.j2", report).strip()
    return ""


def _render(template: str, report: Report) -> str:
    return TEMPLATES.get_template(template).render(report=report, config=report.config)
