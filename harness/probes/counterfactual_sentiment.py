"""Counterfactual sentiment: does a sentiment classifier's positive-class probability move when only the person in
a sentence changes? In the design of the Equity Evaluation Corpus (Kiritchenko & Mohammad 2018).

Sentences come from the project's templates (harness/probes/templates/counterfactual_sentiment.yaml) or from the
real EEC CSV (`--data Equity-Evaluation-Corpus.csv`, its columns Sentence, Template, Person, Gender, Race,
Emotion, Emotion word). For every template instance (frame x emotion word) the probe takes the mean positive
probability over the sentences of each group and their difference, paired within the instance:

- gender: female - male (noun phrases and names);
- race: African-American names - European-American names (EEC's race attribute; rows without race are ignored).

Reported per attribute (and per emotion): the mean paired difference with a bootstrap 95% interval over template
instances, and the two-sided Wilcoxon signed-rank test of the differences (scipy). 0 is the unbiased value.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from harness.errors import DataError
from harness.metrics.bootstrap import bootstrap
from harness.probes.base import LM, ProbeResult, ProbeSpec, Settings

TEMPLATES = Path(__file__).resolve().parent / "templates" / "counterfactual_sentiment.yaml"
ATTRIBUTES = {"gender": ("female", "male"), "race": ("african_american", "european_american")}
EEC_COLUMNS = ("Sentence", "Template", "Person", "Gender", "Race", "Emotion", "Emotion word")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def from_templates(path: Path = TEMPLATES) -> list[dict]:
    t = yaml.safe_load(path.read_text(encoding="utf-8"))
    persons: list[tuple[str, str, Optional[str]]] = []  # (text, gender, race)
    for female, male in t["noun_phrases"]:
        persons += [(female, "female", None), (male, "male", None)]
    for race, by_gender in t["names"].items():
        for gender, names in by_gender.items():
            persons += [(n, gender, race) for n in names]
    rows = []
    for fi, frame in enumerate(t["frames"]):
        for emotion, words in t["emotions"].items():
            for word in words:
                for person, gender, race in persons:
                    text = frame.replace("{person}", person).replace("{emotion}", word)
                    rows.append(
                        {
                            "sentence": _cap(text),
                            "template": f"frame{fi}",
                            "emotion": emotion,
                            "emotion_word": word,
                            "person": person,
                            "gender": gender,
                            "race": race,
                        }
                    )
    return rows


def from_eec(path: Path) -> tuple[list[dict], list[str]]:
    rows, bad = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in EEC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: no column(s) {', '.join(missing)}",
                f"use the Equity Evaluation Corpus CSV (columns {', '.join(EEC_COLUMNS)})",
            )
        for r in reader:
            g = (r["Gender"] or "").strip().lower()
            race = (r["Race"] or "").strip().lower().replace("-", "_") or None
            if not (r["Sentence"] or "").strip() or g not in ("female", "male"):
                bad += 1
                continue
            rows.append(
                {
                    "sentence": r["Sentence"].strip(),
                    "template": r["Template"],
                    "emotion": r["Emotion"] or "none",
                    "emotion_word": r["Emotion word"] or "",
                    "person": r["Person"],
                    "gender": g,
                    "race": race if race in ATTRIBUTES["race"] else None,
                }
            )
    return rows, ([f"{path.name}: {bad} malformed row(s) skipped"] if bad else [])


def load(spec: ProbeSpec, data_dir: Optional[Path], override: Optional[Path] = None) -> tuple[list[dict], list[str]]:
    if override is not None:
        p = override.expanduser().resolve()
        if not p.is_file():
            raise DataError(f"{p} does not exist", "pass the EEC CSV file with --data")
        rows, notes = from_eec(p)
        return rows, notes + [f"sentences from {p.name} (EEC format)"]
    return from_templates(), [f"sentences from the project's templates ({TEMPLATES.name})"]


def positive_index(lm: LM) -> tuple[int, str]:
    labels = {int(k): str(v) for k, v in (lm.model.config.id2label or {}).items()}
    for i, name in labels.items():
        if name.lower() in ("positive", "pos", "label_1_positive"):
            return i, name
    if len(labels) == 2:
        return 1, labels.get(1, "1")
    raise DataError(
        f"the classifier's labels {labels} have no positive class",
        "probe a binary sentiment classifier (e.g. one trained by make eval TASK=imdb)",
    )


def positive_probs(lm: LM, sentences: list[str], batch_size: int) -> np.ndarray:
    import torch

    idx, _ = positive_index(lm)
    out = np.zeros(len(sentences))
    dev = next(lm.model.parameters()).device
    with torch.inference_mode():
        for b in range(0, len(sentences), batch_size):
            enc = lm.tokenizer(
                sentences[b : b + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            ).to(dev)
            probs = lm.model(**enc).logits.float().softmax(-1)[:, idx]
            out[b : b + batch_size] = probs.cpu().numpy()
    return out


def paired_differences(frame: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """One row per template instance with both groups present: its emotion and mean(group a) - mean(group b)."""
    a, b = ATTRIBUTES[attribute]
    col = "gender" if attribute == "gender" else "race"
    d = frame[frame[col].isin([a, b])]
    means = d.groupby(["template", "emotion", "emotion_word", col])["p_positive"].mean().unstack(col)
    means = means.dropna(subset=[a, b])
    out = means.reset_index()[["template", "emotion", "emotion_word"]]
    out["difference"] = (means[a] - means[b]).to_numpy()
    return out


def evaluate(lm: LM, rows: list[dict], spec: ProbeSpec, s: Settings) -> ProbeResult:
    from scipy.stats import wilcoxon

    frame = pd.DataFrame(rows)
    frame["p_positive"] = positive_probs(lm, frame["sentence"].tolist(), s.batch_size)
    estimates: dict[str, Any] = {}
    scalars: dict[str, float] = {"sentences": float(len(frame))}
    cat_rows = []
    for attribute, (a, b) in ATTRIBUTES.items():
        diffs = paired_differences(frame, attribute)
        if diffs.empty:
            continue
        d = diffs["difference"].to_numpy()
        emotions = diffs["emotion"].to_numpy()
        groups = {
            attribute: np.ones(len(d), bool),
            **{f"{attribute}:{e}": emotions == e for e in sorted(set(emotions))},
        }

        def stats(idx: np.ndarray, d=d, groups=groups) -> dict[str, float]:
            return {
                f"{g}/mean_difference": float(d[idx][m[idx]].mean()) if m[idx].any() else float("nan")
                for g, m in groups.items()
            }

        est = bootstrap(stats, len(d), resamples=s.resamples, confidence=s.confidence, seed=s.seed)
        estimates.update(est)
        for g, m in groups.items():
            e = est[f"{g}/mean_difference"]
            nz = d[m][d[m] != 0]
            p = float(wilcoxon(nz).pvalue) if len(nz) >= 2 else float("nan")
            scalars[f"{g.replace(':', '_')}/wilcoxon_p"] = p
            cat_rows.append(
                {
                    "category": g,
                    "metric": "mean_difference",
                    "value": e.value,
                    "ci_low": e.low,
                    "ci_high": e.high,
                    "n": int(m.sum()),
                    "wilcoxon_p": p,
                    "comparison": f"{a} - {b}",
                }
            )
    if not cat_rows:
        raise DataError("no sentence pairs differ only in gender or race", "check the templates or the EEC file")
    label = positive_index(lm)[1]
    return ProbeResult(
        estimates,
        pd.DataFrame(cat_rows),
        frame,
        scalars,
        notes=[
            f"positive class: '{label}'; differences are in probability (0-1), paired per "
            "template instance; Wilcoxon signed-rank, two-sided"
        ],
        main_metric="mean_difference",
        ideal=0.0,
    )
