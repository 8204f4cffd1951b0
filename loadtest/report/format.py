"""How the report writes a figure, a range and a table for the console."""

from __future__ import annotations

from loadtest.stats import Range

DASH = "\u2013"  # en dash, for ranges
TIMES = "\u00d7"  # multiplication sign, for ratios


def num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return DASH
    return f"{x:,.{digits}f}"


def fmt_ms(x: float | None) -> str:
    return DASH if x is None else f"{x:g}"


def span(mmm: Range | None, digits: int = 0, suffix: str = "") -> str:
    """A median, with its range in brackets when min and max differ."""
    if not mmm:
        return DASH
    med, lo, hi = mmm
    if lo == hi:
        return f"{num(med, digits)}{suffix}"
    return f"{num(med, digits)}{suffix} ({num(lo, digits)}{DASH}{num(hi, digits)})"


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def short(container: str, project: str) -> str:
    """A container's name without its compose project: `app_2` for `flaskstack_app_2`."""
    return container.removeprefix(project).lstrip("_-")


def console_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in out)
