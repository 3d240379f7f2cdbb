"""`harness compare`: is run B better than run A on the same test examples, by how much, and how sure is that?

    harness compare RUN_A RUN_B [RUN_C ...] [--metric M ...] [--json]
    harness compare --predictions A B [C ...] --references R [--metric bleu chrf rouge] [--json]
    harness compare --predictions A.json B.json --gold dev-v2.0.json [--json]

The first system is the baseline; every other one is compared with it, per metric: the difference B − A with a
paired-bootstrap 95% interval, a p-value and the test that gave it (harness/metrics/paired.py): McNemar's exact test
for accuracy, sacreBLEU's own paired bootstrap for BLEU and chrF (its numbers exactly), and the paired bootstrap for
every other metric, each also with approximate randomization. With several systems, Holm's correction is applied
per metric and stated. Runs must have scored the same examples (the same split digest) with the same metric
signatures, or the comparison is refused. A seeds parent run (`harness run ... seeds=N`) compares as all its seeds:
examples and seeds are resampled together.

The result is printed as a table (or one JSON object with `--json`) and kept as an MLflow run in the experiment
`compare`: tagged with every compared run, holding the table (`compare/result.json`), a plot of the differences with
their intervals, and the examples on which the systems' outputs differ, with both outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from harness.errors import ConfigError, DataError
from harness.metrics import paired

ALPHA = 0.05
LOWER_IS_BETTER = ("ece", "perplexity", "loss")


# ---- systems: what each compared thing contributes -------------------------------------------------------------------


@dataclass
class Metric:
    """One metric of a comparison: how to score a system's per-example arrays, and which test decides it."""

    name: str
    score: paired.Score
    test: str = "bootstrap"  # bootstrap | mcnemar | sacrebleu
    trials: int = paired.AR_TRIALS  # approximate-randomization shuffles
    signature: str = ""  # how the number is computed (ROUGE's engine and split, sacreBLEU's signature); "" if fixed


@dataclass
class System:
    name: str
    arrays: list[paired.Arrays]  # one per seed (a plain run or a file: one)
    keys: np.ndarray  # the examples, in the order of the arrays (row ids, or question ids)
    outputs: list[str]  # what the system answered per example (for the disagreement table)
    run_id: Optional[str] = None
    task: Optional[str] = None
    family: Optional[str] = None
    digest: Optional[str] = None
    signatures: dict[str, str] = field(default_factory=dict)
    texts: Optional[list[list[str]]] = None  # translation: hypotheses per seed (sacreBLEU scores the text itself)
    test_data: Optional[str] = None  # a user's file the run scored in place of the test split, in words
    file: Optional[tuple[str, str]] = None  # a system given as a file: (path, sha256)


# ---- the comparison --------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    baseline: System
    systems: list[System]
    metrics: list[Metric]
    results: dict[str, dict[str, dict[str, Any]]]  # system -> metric -> {value, delta, ci_low, ci_high, p_value, ...}
    examples: int
    holm: bool
    draws: dict[str, dict[str, np.ndarray]]  # system -> metric -> bootstrap differences

    @property
    def all(self) -> list[System]:
        return [self.baseline, *self.systems]

    @property
    def signatures(self) -> dict[str, str]:
        """metric -> the signature its numbers were computed under (only metrics that have one)."""
        return {m.name: m.signature for m in self.metrics if m.signature}

    def as_json(self) -> dict[str, Any]:
        sig = self.signatures
        return {
            "baseline": self.baseline.name,
            "examples": self.examples,
            "test_data": self.baseline.test_data or "the task's test split",
            **(
                {"files": [{"system": x.name, "path": x.file[0], "sha256": x.file[1]} for x in self.all if x.file]}
                if self.baseline.file
                else {}
            ),
            "baseline_values": {m.name: self.results["__baseline__"][m.name] for m in self.metrics},
            "holm": self.holm,
            "signatures": sig,
            "systems": [
                {
                    "name": s.name,
                    "metrics": {
                        k: {**v, **({"signature": sig[k]} if k in sig else {})} for k, v in self.results[s.name].items()
                    },
                }
                for s in self.systems
            ],
        }


P_VALUES = ("p_value", "p_approximate_randomization", "p_paired_bootstrap")  # what a comparison reports


def compare(
    systems: list[System],
    metrics: list[Metric],
    *,
    references: Optional[list[str]] = None,
    resamples: int = paired.BOOTSTRAP_RESAMPLES,
    seed: int = paired.SEED,
    confidence: float = 0.95,
) -> Comparison:
    base, others = systems[0], systems[1:]
    results: dict[str, dict[str, dict[str, Any]]] = {"__baseline__": {}}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for m in metrics:
        results["__baseline__"][m.name] = _value(m, base)
    for s in others:
        results[s.name], draws[s.name] = {}, {}
        for m in metrics:
            r, d = _one(m, base, s, references, resamples, seed, confidence)
            results[s.name][m.name], draws[s.name][m.name] = r, d
    use_holm = len(others) > 1
    if use_holm:  # every p-value a row shows is adjusted over the systems, the approximate-randomization ones too
        for m in metrics:
            for key in P_VALUES:
                rs = [results[s.name][m.name] for s in others]
                if not all(paired.is_finite(r.get(key)) for r in rs):
                    continue
                for r, p in zip(rs, paired.holm([r[key] for r in rs])):
                    r[f"{key}_unadjusted"], r[key] = r[key], p
            for s in others:
                results[s.name][m.name]["test"] += f"; every p Holm-adjusted over {len(others)} systems"
    for s in others:
        for m in metrics:
            r = results[s.name][m.name]
            r["significant"] = bool(r["p_value"] < ALPHA)
            # the one rule: the verdict follows p, the test named in `method`; approximate randomization is a second
            # opinion, and where the two fall on different sides of alpha the row says so
            r["verdict_by"] = r["method"]
            other = r.get("p_approximate_randomization")
            r["tests_disagree"] = bool(paired.is_finite(other) and (other < ALPHA) != r["significant"])
    return Comparison(base, others, metrics, results, len(base.keys), use_holm, draws)


def _value(m: Metric, s: System) -> float:
    return float(np.mean([m.score(a) for a in s.arrays]))


def _one(
    m: Metric, a: System, b: System, references: Optional[list[str]], resamples: int, seed: int, confidence: float
) -> tuple[dict[str, Any], np.ndarray]:
    if len(a.arrays) > 1 or len(b.arrays) > 1:
        return _seeded(m, a, b, resamples, seed, confidence)
    boot = paired.paired_bootstrap(
        m.score, a.arrays[0], b.arrays[0], resamples=resamples, seed=seed, confidence=confidence
    )
    out = {"value": boot.b, "delta": boot.delta, "ci_low": boot.ci_low, "ci_high": boot.ci_high}
    if m.test == "sacrebleu":
        p_bs, p_ar = _sacrebleu_p(m.name, a, b, references, resamples)
        out.update(
            p_value=p_bs,
            p_approximate_randomization=p_ar,
            method="sacreBLEU paired bootstrap",
            test=f"sacreBLEU paired bootstrap ({resamples} resamples, seed {seed}); approximate "
            f"randomization p from sacreBLEU ({m.trials} trials)",
        )
        return out, boot.draws
    p_ar = paired.approximate_randomization(m.score, a.arrays[0], b.arrays[0], trials=m.trials, seed=seed)
    if m.test == "mcnemar":
        p = paired.mcnemar(a.arrays[0]["correct"], b.arrays[0]["correct"])
        out.update(
            p_value=p,
            p_paired_bootstrap=boot.p_value,
            p_approximate_randomization=p_ar,
            method="McNemar exact",
            test=f"McNemar exact; interval from the paired bootstrap ({resamples} resamples)",
        )
    else:
        out.update(
            p_value=boot.p_value,
            p_approximate_randomization=p_ar,
            method="paired bootstrap",
            test=f"paired bootstrap ({resamples} resamples, seed {seed}); approximate randomization p "
            f"({m.trials} trials)",
        )
    return out, boot.draws


def _seeded(
    m: Metric, a: System, b: System, resamples: int, seed: int, confidence: float
) -> tuple[dict[str, Any], np.ndarray]:
    """Several seeds per side: resample the examples (jointly for both sides) and each side's seeds."""
    rng = np.random.default_rng(seed)
    n = len(a.keys)
    idx = rng.choice(n, size=(resamples, n), replace=True)
    sa, sb = len(a.arrays), len(b.arrays)
    diffs = np.empty(resamples)
    for r in range(resamples):
        pa = rng.integers(0, sa, size=sa)
        pb = rng.integers(0, sb, size=sb)
        va = np.mean([m.score(paired.take(a.arrays[k], idx[r])) for k in pa])
        vb = np.mean([m.score(paired.take(b.arrays[k], idx[r])) for k in pb])
        diffs[r] = vb - va
    va, vb = _value(m, a), _value(m, b)
    p = paired.null_p(diffs, vb - va)
    lo, hi = paired.interval(diffs, confidence)
    return (
        {
            "value": vb,
            "delta": vb - va,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": p,
            "method": "bootstrap over seeds",
            "test": f"paired bootstrap over examples and seeds ({sa} vs {sb} seeds, {resamples} resamples)",
        },
        diffs,
    )


def _sacrebleu_p(
    name: str, a: System, b: System, references: Optional[list[str]], resamples: int
) -> tuple[float, float]:
    """sacreBLEU's own paired tests (`sacrebleu REF -i A B --paired-bs` and `--paired-ar`)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    metric = {"bleu": BLEU, "chrf": CHRF}[name]
    systems = [(a.name, a.texts[0]), (b.name, b.texts[0])]
    out = []
    for kind, n in (("bs", resamples), ("ar", paired.AR_TRIALS)):
        _, scores = PairedTest(systems, {name: metric()}, references=[references], test_type=kind, n_samples=n)()
        out.append(float(next(v for k, v in scores.items() if k != "System")[1].p_value))
    return out[0], out[1]


# ---- what each family compares ---------------------------------------------------------------------------------------


def classification_metrics(
    table: pd.DataFrame, labels: list[str], names: list[str]
) -> tuple[paired.Arrays, list[Metric]]:
    """Accuracy (McNemar), macro-F1, AUROC and ECE, as the runs compute them, from the logged predictions."""
    import torch

    from harness.metrics import classification as cls_metrics

    index = {n: i for i, n in enumerate(labels)}
    y = np.array([index[v] for v in table["label"]])
    pred = np.array([index[v] for v in table["prediction"]])
    arrays: paired.Arrays = {"correct": (y == pred).astype(float), "y": y, "pred": pred}
    prob_cols = [f"p_{n}" for n in labels]
    has_probs = all(c in table.columns for c in prob_cols)
    if has_probs:
        arrays["probs"] = table[prob_cols].to_numpy(dtype=np.float32)

    def torch_metric(key: str) -> paired.Score:
        def score(x: paired.Arrays) -> float:
            probs = (
                torch.tensor(x["probs"])
                if "probs" in x
                else torch.nn.functional.one_hot(torch.as_tensor(x["pred"]), len(labels)).float()
            )
            return cls_metrics.compute(probs, torch.as_tensor(x["y"]), names=(key,))[key]

        return score

    metrics = [Metric("accuracy", paired.mean_of("correct"), test="mcnemar")]
    for key in ("f1_macro", "auroc", "ece"):
        if key in names and (key == "f1_macro" or has_probs):
            metrics.append(Metric(key, torch_metric(key), trials=1000))
    return arrays, [m for m in metrics if m.name in names]


def squad_metrics(
    exact: np.ndarray, f1: np.ndarray, has_answer: Optional[np.ndarray], v2: bool
) -> tuple[paired.Arrays, list[Metric]]:
    """EM and F1 (0-100) per question, as the official scripts define them; SQuAD 2.0 also by HasAns / NoAns."""
    arrays: paired.Arrays = {"exact": exact.astype(float), "f1": f1.astype(float)}
    metrics = [
        Metric("exact" if v2 else "exact_match", paired.mean_of("exact", 100.0)),
        Metric("f1", paired.mean_of("f1", 100.0)),
    ]
    if v2 and has_answer is not None and has_answer.any() and (~has_answer).any():
        arrays["has"] = has_answer.astype(bool)
        for subset, mask in (("HasAns", True), ("NoAns", False)):
            for key in ("exact", "f1"):
                metrics.append(Metric(f"{subset}_{key}", _subset_mean(key, mask), trials=1000))
    return arrays, metrics


def _subset_mean(key: str, has: bool) -> paired.Score:
    def score(x: paired.Arrays) -> float:
        sel = x["has"] == has
        return 100.0 * float(x[key][sel].mean()) if sel.any() else float("nan")

    return score


def rouge_metrics(
    hyps: list[str], refs: list[str], split: str, engine: str = "rouge-score"
) -> tuple[paired.Arrays, list[Metric]]:
    """ROUGE-1/2/L/Lsum per example (mean F x100, as runs report it), recomputed from the texts by `engine`, each
    metric signed (engine, split)."""
    from harness.metrics.generation import rouge_scores, rouge_signature

    scores = rouge_scores(refs, hyps, split, engine)
    arrays = {k: np.asarray(v)[:, 2] for k, v in scores.items()}
    sig = rouge_signature(split, engine) + "|scale:x100"
    return arrays, [Metric(k, paired.mean_of(k, 100.0), signature=sig) for k in scores]


def sacre_metrics(hyps: list[str], refs: list[str], names: list[str]) -> tuple[paired.Arrays, list[Metric]]:
    """BLEU and chrF from sacreBLEU's sufficient statistics per sentence (the p-values come from sacreBLEU itself)."""
    from sacrebleu.metrics import BLEU, CHRF

    arrays: paired.Arrays = {}
    metrics = []
    for name, cls in (("bleu", BLEU), ("chrf", CHRF)):
        if name not in names:
            continue
        metric = cls()
        arrays[f"{name}_stats"] = np.asarray(metric._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)

        def score(x: paired.Arrays, metric: Any = metric, key: str = f"{name}_stats") -> float:
            return float(metric._compute_score_from_stats(x[key].sum(0)).score)

        metrics.append(Metric(name, score, test="sacrebleu", signature=str(metric.get_signature())))
    return arrays, metrics


def perplexity_metrics(nll: np.ndarray, tokens: np.ndarray) -> tuple[paired.Arrays, list[Metric]]:
    def ppl(x: paired.Arrays) -> float:
        return float(np.exp(x["nll"].sum() / max(x["tokens"].sum(), 1)))

    def loss(x: paired.Arrays) -> float:
        return float(x["nll"].sum() / max(x["tokens"].sum(), 1))

    return {"nll": nll.astype(float), "tokens": tokens.astype(float)}, [
        Metric("perplexity", ppl, trials=1000),
        Metric("loss", loss, trials=1000),
    ]


# ---- output ----------------------------------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def print_table(c: Comparison, say: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True, width=max(150, Console().width))  # a table that fits, even when piped
    for s in c.systems:
        data = f" of {c.baseline.test_data}" if c.baseline.test_data else ""
        title = f"{s.name} vs {c.baseline.name} (baseline) · {c.examples:,} examples{data}"
        table = Table(title=title, title_justify="left")
        for col, justify in (
            ("metric", "left"),
            ("A", "right"),
            ("B", "right"),
            ("Δ = B − A  [95% CI]", "right"),
            ("p", "right"),
            ("p (AR)", "right"),
            ("test", "left"),
            (f"at α={ALPHA}", "left"),
        ):
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for m in c.metrics:
            r = c.results[s.name][m.name]
            verdict = ("B better" if r["delta"] > 0 else "B worse") if r["significant"] else "no difference shown"
            if m.name in LOWER_IS_BETTER and r["significant"]:
                verdict = "B better" if r["delta"] < 0 else "B worse"
            if r.get("tests_disagree"):
                verdict += " (by p; p (AR) disagrees: unsettled)"
            table.add_row(
                m.name,
                fmt(c.results["__baseline__"][m.name]),
                fmt(r["value"]),
                f"{r['delta']:+.4f}  [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
                paired.format_p(r["p_value"]),
                paired.format_p(r.get("p_approximate_randomization")),
                r["method"] + (" (Holm)" if c.holm else ""),
                verdict,
            )
        console.print(table)
    tests = sorted({c.results[s.name][m.name]["test"] for s in c.systems for m in c.metrics})
    for t in tests:
        say(f"  test: {t}")
    signed: dict[str, list[str]] = {}
    for name, sig in c.signatures.items():
        signed.setdefault(sig, []).append(name)
    for sig, names in signed.items():
        say(f"  signature ({', '.join(names)}): {sig}")
    say("  p (AR): approximate randomization, the same question asked by shuffling the two systems' outputs")
    say(
        f"  the verdict (at α={ALPHA}) follows p, the test in the `test` column; p (AR) is a second opinion, and a row "
        "where the two fall on different sides of α is marked unsettled"
    )
    split = [(s.name, m.name) for s in c.systems for m in c.metrics if c.results[s.name][m.name].get("tests_disagree")]
    if split:
        say(f"  the two tests disagree on: {', '.join(f'{n} · {m}' for n, m in split)}")


def disagreements(c: Comparison) -> pd.DataFrame:
    """The examples on which a system's output differs from the baseline's, with both outputs."""
    rows = []
    base = dict(zip(c.baseline.keys.tolist(), c.baseline.outputs))
    for s in c.systems:
        for key, out in zip(s.keys.tolist(), s.outputs):
            if out != base.get(key):
                rows.append({"example": key, "system": s.name, "baseline_output": base.get(key), "output": out})
    return pd.DataFrame(rows, columns=["example", "system", "baseline_output", "output"])


def difference_figure(c: Comparison) -> Any:
    from harness.tracking.plots import plt  # pyplot on the Agg backend

    labels, deltas, lows, highs, colors = [], [], [], [], []
    for s in c.systems:
        for m in c.metrics:
            r = c.results[s.name][m.name]
            labels.append(f"{s.name} · {m.name}" if len(c.systems) > 1 else m.name)
            deltas.append(r["delta"])
            lows.append(r["delta"] - r["ci_low"])
            highs.append(r["ci_high"] - r["delta"])
            colors.append("#C44E52" if r["significant"] else "#8C8C8C")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.5), dpi=120)
    y = np.arange(len(labels))
    for yi, d, lo, hi, color in zip(y, deltas, lows, highs, colors):
        ax.errorbar([d], [yi], xerr=[[lo], [hi]], fmt="o", color=color, ecolor=color, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"B − A vs {c.baseline.name} (95% paired-bootstrap interval; red: p < {ALPHA})")
    fig.tight_layout()
    return fig


def check_same_examples(systems: list[System]) -> None:
    base = systems[0]
    for s in systems[1:]:
        if s.digest and base.digest and s.digest != base.digest:
            raise DataError(
                f"{s.name} scored other test examples than {base.name} (split digest {s.digest} vs {base.digest})",
                "compare runs evaluated on the same split and subset (same data.test_size, data.test_file)",
            )
        if len(s.keys) != len(base.keys) or not np.array_equal(np.sort(s.keys), np.sort(base.keys)):
            raise DataError(
                f"{s.name} and {base.name} scored different examples ({len(s.keys)} vs {len(base.keys)})",
                "compare outputs for the same examples",
            )
        for name, sig in s.signatures.items():
            other = base.signatures.get(name)
            if other is not None and same_numbers(other) != same_numbers(sig):
                raise ConfigError(
                    f"{name} was computed differently by {s.name} ({sig}) and {base.name} ({other})",
                    "compare runs whose metric signatures match",
                )


def same_numbers(signature: str) -> str:
    """A signature without what does not change the numbers: the implementation that computed them (`impl:`, Perl
    ROUGE-1.5.5 or its port) and the order its WordNet exceptions were read in (`exceptions:`, pinned since; runs
    signed before it carry neither).

    >>> same_numbers("engine:ROUGE-1.5.5|lsum-split:auto|agg:mean-f|impl:perl(x)|scale:x100")
    'engine:ROUGE-1.5.5|lsum-split:auto|agg:mean-f|scale:x100'
    """
    parts = [p for p in signature.split("|") if not p.startswith(("impl:", "exceptions:"))]
    return "|".join(parts)


def align(systems: list[System]) -> None:
    """Put every system's examples in the baseline's order."""
    order = {k: i for i, k in enumerate(systems[0].keys.tolist())}
    for s in systems[1:]:
        perm = np.argsort([order[k] for k in s.keys.tolist()], kind="stable")
        s.keys = s.keys[perm]
        s.arrays = [paired.take(a, perm) for a in s.arrays]
        s.outputs = [s.outputs[i] for i in perm]
        if s.texts is not None:
            s.texts = [[t[i] for i in perm] for t in s.texts]


def write_json(c: Comparison) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(c.as_json()))


def save_outputs(c: Comparison, folder: Path) -> None:
    import matplotlib.pyplot as plt

    (folder / "compare").mkdir(parents=True, exist_ok=True)
    (folder / "compare" / "result.json").write_text(write_json(c))
    disagreements(c).to_json(folder / "compare" / "disagreements.json", orient="split", index=False, force_ascii=False)
    (folder / "plots").mkdir(exist_ok=True)
    fig = difference_figure(c)
    fig.savefig(folder / "plots" / "differences.png")
    plt.close(fig)
