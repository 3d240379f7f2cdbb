"""Local `evaluate` modules for harness's generation metrics, so `evaluate.load` works offline:

    import evaluate
    from harness.evaluate_modules import path
    rouge = evaluate.load(path("rouge"))      # also "bleu", "chrf"
    rouge.compute(predictions=[...], references=[...])

The numbers are the ones `harness run` and `harness score` report (harness/metrics/generation.py): ROUGE identical
to rouge-score (0-1 F-measures, with precision/recall and bootstrap intervals), BLEU and chrF from sacreBLEU itself
(0-100) with their signatures. Nothing is fetched from the hub.

On the metrics floor. May import: metrics and the ground only.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("rouge", "bleu", "chrf")


def path(name: str) -> str:
    """The folder to pass to `evaluate.load` for metric `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; harness ships {', '.join(NAMES)}")
    return str(Path(__file__).resolve().parent / name)
