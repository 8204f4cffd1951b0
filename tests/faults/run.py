"""Run the fault and attack tests against a running stack and print every figure they measure.

    make faults                      # test stack up, this script, stack down
    PROJECT=flaskstack-test ENV_FILE=build/test.env STACK_URL=http://127.0.0.1:18080 \
        BASELINE_URL=http://127.0.0.1:15000 .venv/bin/python tests/faults/run.py [-k sigkill]

The tests (tests/faults/test_faults.py, test_faults_edge.py) kill replicas and restart Postgres
under load, so point this at a stack you can afford to disturb (the test stack by default); each
test leaves three healthy replicas behind. Output is pytest's, live; at the end the
`FIGURE name: ...` lines are repeated as one block and written to build/faults-figures.txt.
Extra arguments go to pytest. The exit status is pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/faults"]
DEFAULTS = {
    "PROJECT": "flaskstack-test",
    "ENV_FILE": "build/test.env",
    "STACK_URL": "http://127.0.0.1:18080",
    "BASELINE_URL": "http://127.0.0.1:15000",
}


def main(argv: list[str]) -> int:
    env = {**DEFAULTS, **os.environ}
    python = ROOT / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "-p", "no:locust"]
    cmd += ["-s", "-q", "--durations=0", *TESTS, *argv]
    print(f"fault tests against {env['STACK_URL']} (project {env['PROJECT']})", flush=True)
    started = time.monotonic()
    figures: list[str] = []
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout or ():
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("FIGURE "):
                figures.append(line.rstrip("\n"))
        status = proc.wait()
    took = time.monotonic() - started
    summary = [f"fault tests: exit {status} after {took:.0f} s", *figures]
    out = ROOT / "build" / "faults-figures.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(summary) + "\n", encoding="utf-8")
    print("\n" + "=" * 30 + " figures " + "=" * 30)
    print("\n".join(summary))
    print(f"(also in {out.relative_to(ROOT)})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
