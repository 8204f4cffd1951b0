"""python -m loadtest.report <results directory>: rebuild its report from results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loadtest.report import write_report


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1])
    results = json.loads((out_dir / "results.json").read_text())
    print(write_report(out_dir, results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
