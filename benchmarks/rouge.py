"""ROUGE speed: the engine harness uses (`rouge-score-rs`) vs Google's `rouge-score`, same pairs, identical scores
required; and the whole `harness score rouge` command against the engine alone.

    make bench            (or: python benchmarks/rouge.py [--limit N] [--data DIR])

Pairs: the full CNN/DailyMail test set (11,490 reference highlights, one sentence per line) against the Lead-3
baseline (the article's first three sentences, one per line), ROUGE-1/2/L/Lsum with the Porter stemmer. Prints the
engine's time, rouge-score's time and the ratio, the time of `harness score rouge` as a process (imports, reading
the files, sentence splitting, scoring, bootstrap intervals for 12 numbers, printing) as a multiple of the engine's,
the mean F-measures, and the number of per-example scores that differ (must be 0). Then the same command with
`--engine pyrouge` (the numbers papers report, ROUGE-1.5.5's text processing in Python: harness/metrics/rouge155.py)
as a multiple of the default command's time (goal: at most 2x).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def lead3(article: str) -> str:
    """The first three sentences of a See et al. tokenized article (sentences end with " . ", " ! " or " ? ")."""
    return "\n".join(s.strip() for s in re.split(r"(?<= [.!?]) ", article.strip())[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    path = Path(args.data) / "summarization" / "cnn_dailymail" / "test.jsonl.gz"
    if not path.is_file():
        print(f"error: {path} not found; pass --data <data dir> or set HARNESS_DATA_DIR", file=sys.stderr)
        return 2
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows = rows[: args.limit] if args.limit else rows
    refs = [r["highlights"] for r in rows]
    preds = [lead3(r["article"]) for r in rows]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]

    from rouge_score import rouge_scorer

    from harness.metrics.rouge import score_pairs

    score_pairs(refs[:10], preds[:10], types)  # imports and thread pool start-up are not timed, on either side
    t = time.perf_counter()
    ours = score_pairs(refs, preds, types)
    t_ours = time.perf_counter() - t

    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    scorer.score(refs[0], preds[0])
    t = time.perf_counter()
    theirs = [scorer.score(a, b) for a, b in zip(refs, preds)]
    t_theirs = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:  # the command a user waits for, start to end
        for name, texts in (("hyp.jsonl", preds), ("ref.jsonl", refs)):
            Path(tmp, name).write_text("".join(json.dumps({"text": x}) + "\n" for x in texts), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "harness.cli",
            "score",
            "rouge",
            "--predictions",
            f"{tmp}/hyp.jsonl",
            "--references",
            f"{tmp}/ref.jsonl",
            "--json",
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        t_cmd = time.perf_counter() - t
        # the numbers papers report (ROUGE-1.5.5's tokens and stems, harness/metrics/rouge155.py): the same command
        t = time.perf_counter()
        papers = subprocess.run([*cmd, "--engine", "pyrouge"], check=True, capture_output=True, text=True)
        t_papers = time.perf_counter() - t
        papers_f = json.loads(papers.stdout.strip().splitlines()[-1])

    diff = sum(
        (s[k].precision, s[k].recall, s[k].fmeasure) != tuple(ours[k][i]) for k in types for i, s in enumerate(theirs)
    )
    print(f"ROUGE-1/2/L/Lsum on {len(rows):,} CNN/DailyMail test pairs (Lead-3 vs highlights), {os.cpu_count()} CPUs")
    print(f"  rouge-score-rs (harness's engine) {t_ours:6.2f} s")
    print(f"  rouge-score                       {t_theirs:6.2f} s   {t_theirs / t_ours:.1f}x the engine's time")
    print(
        f"  harness score rouge (process)     {t_cmd:6.2f} s   {t_cmd / t_ours:.1f}x the engine's time "
        "(with 95% bootstrap intervals)"
    )
    ratio = t_papers / t_cmd
    print(
        f"  harness score rouge --engine pyrouge {t_papers:6.2f} s   {ratio:.2f}x the default command's time "
        f"(goal <= 2x: {'met' if ratio <= 2 else 'MISSED'}; Perl ROUGE-1.5.5 itself: minutes, make test-papers)"
    )
    print("  mean F (x100): " + ", ".join(f"{k} {100 * sum(x[2] for x in ours[k]) / len(rows):.2f}" for k in types))
    print("  papers' numbers (x100): " + ", ".join(f"{k} {100 * papers_f[k]:.2f}" for k in types))
    print(f"  per-example scores that differ from rouge-score: {diff}")
    return 0 if diff == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
