"""Command-line start-up: `harness --help` and the light commands, against a bare interpreter start in the same run.

    make bench            (or: python benchmarks/startup.py [--repeat 5] [--json])

Each command runs in a fresh process `--repeat` times; the median wall time is reported with the ratio to
`python -c pass` measured the same way (what any Python command costs on this machine). Goal: `harness --help`
<= 1 s on an idle machine (its parser imports no torch, Lightning, transformers or MLflow).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 1.0


def wall(cmd: list[str], repeat: int, cwd: str) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    harness = [sys.executable, "-m", "harness.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        hyp, ref = Path(tmp) / "hyp.txt", Path(tmp) / "ref.txt"
        hyp.write_text("the cat sat on the mat .\n" * 50)
        ref.write_text("a cat sat on the mat .\n" * 50)
        baseline = wall([sys.executable, "-c", "pass"], args.repeat, tmp)
        rows = {
            "harness --help": wall([*harness, "--help"], args.repeat, tmp),
            "harness ls": wall([*harness, "ls"], args.repeat, tmp),
            "harness score rouge (50 pairs)": wall(
                [*harness, "score", "rouge", "--predictions", str(hyp), "--references", str(ref)], args.repeat, tmp
            ),
        }
    result = {
        "baseline_seconds": baseline,
        "commands": {k: {"seconds": v, "ratio": v / baseline} for k, v in rows.items()},
        "goal_seconds": GOAL_SECONDS,
        "help_met": rows["harness --help"] <= GOAL_SECONDS,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"start-up (median of {args.repeat}; baseline python -c pass: {baseline * 1000:.0f} ms)")
    for name, r in result["commands"].items():
        print(f"  {name:32} {r['seconds'] * 1000:7.0f} ms  {r['ratio']:5.1f}x the baseline")
    verdict = "met" if result["help_met"] else "MISSED"
    print(f"goal: harness --help <= {GOAL_SECONDS:.0f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
