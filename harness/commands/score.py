"""`harness score <task> --predictions FILE`: score a predictions file made anywhere against the task's gold data.

For extractive QA the predictions file is the official format (a JSON object: question id -> answer text; for
SQuAD 2.0 "" means "no answer"), optionally with a no-answer probability file (question id -> number), and the
numbers are the official evaluation scripts' (see harness/metrics/squad.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import ConfigError, DataError


@dataclass
class ScoreOutput:
    totals: dict[str, Any]  # the official keys and values
    intervals: dict[str, tuple[float, float]]  # metric -> bootstrap interval
    questions: int
    gold_source: str
    warnings: list[str] = field(default_factory=list)


def load_mapping(path: Path, what: str, value_type: tuple[type, ...], value_desc: str) -> dict[str, Any]:
    from harness.data.squad import load_json

    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist", "pass the path of an existing file")
    obj = load_json(path, f"{what} file (a JSON object: question id -> {value_desc})")
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: the {what} file is a JSON {type(obj).__name__}, not an object",
            f"write a JSON object mapping each question id to {value_desc}",
        )
    bad = [(k, v) for k, v in obj.items() if not isinstance(v, value_type) or isinstance(v, bool)]
    if bad:
        k, v = bad[0]
        raise DataError(
            f"{path}: {len(bad)} {what} value(s) are not {value_desc} (e.g. id '{k}': {v!r})",
            f"map each question id to {value_desc}",
        )
    return obj


def _gold(task: Any, gold: Optional[Path], data_dir: Optional[str]) -> tuple[list, str, dict[str, Any]]:
    """[(id, answers, context, answer_starts)] in file order, where they came from, and the reader's metadata."""
    from harness.config import resolve_run_config
    from harness.data.sources import load_source_split, load_test_file

    if gold is not None:
        split = load_test_file(task, gold)
    else:
        # the profile only sizes training; naming one spares the CUDA probe (and torch's import) of the default
        overrides = ["profile=quick", *([f"data.data_dir={data_dir}"] if data_dir else [])]
        cfg = resolve_run_config(task, overrides)
        split = load_source_split(task, cfg, "test")  # the whole official evaluation file: no fallback, no subset
    ds = split.dataset
    rows = list(zip(ds["id"], ds["answers"], ds["context"]))
    return rows, split.source, split.meta


def score_qa(
    task: Any,
    predictions: Path,
    gold: Optional[Path] = None,
    na_probs: Optional[Path] = None,
    na_prob_thresh: float = 1.0,
    data_dir: Optional[str] = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScoreOutput:
    import numpy as np

    from harness.data.squad import check_version, is_v2, offset_mismatches
    from harness.metrics import squad
    from harness.metrics.bootstrap import bootstrap

    v2 = is_v2(task)
    preds = load_mapping(predictions, "predictions", (str,), "an answer string")
    probs = None
    if na_probs is not None:
        if not v2:
            raise ConfigError(
                "--na-probs applies to SQuAD 2.0 only (no-answer probabilities)",
                f"drop --na-probs, or score with a v2.0 task (task '{task.name}' is v1.1)",
            )
        probs = load_mapping(na_probs, "no-answer probability", (int, float), "a number")
        probs = {k: float(v) for k, v in probs.items()}
    rows, source, meta = _gold(task, gold, data_dir)
    if "squad_version" in meta:
        check_version(meta["squad_version"], int(meta.get("unanswerable", 0)), v2, task.name, source)
    elif not v2 and any(not a["text"] for _, a, _ in rows):
        n = sum(1 for _, a, _ in rows if not a["text"])
        raise DataError(
            f"{source}: {n} question(s) have no gold answer, which SQuAD v1.1 cannot score",
            "score them with the v2.0 task `squad_v2`",
        )
    warnings: list[str] = []
    golds = [squad.Gold(str(q), list(a["text"])) for q, a, _ in rows]
    if probs is not None:
        lacking = [k for k in preds if k not in probs]
        if lacking:
            raise DataError(
                f"{na_probs}: no value for {len(lacking)} predicted question(s) (e.g. '{lacking[0]}')",
                "give a no-answer probability for every question in the predictions file",
            )
    result = squad.score_v2(golds, preds, probs, na_prob_thresh) if v2 else squad.score_v1(golds, preds)
    if result.missing:
        warnings.append(
            f"{len(result.missing)} of {len(golds)} gold questions have no prediction "
            f"(e.g. '{result.missing[0]}'); they score 0, as in the official script"
        )
    if result.unknown:
        warnings.append(
            f"{len(result.unknown)} predicted id(s) are not in the gold data (e.g. "
            f"'{result.unknown[0]}'); they are ignored"
        )
    found_elsewhere, lost = offset_mismatches([c for _, _, c in rows], [a for _, a, _ in rows])
    if found_elsewhere or lost:
        warnings.append(
            f"{found_elsewhere + lost} gold answer(s) have an answer_start that does not point at their text"
            + (f" ({lost} do not occur in the context)" if lost else "")
            + "; scoring uses the answer text only, so the scores are unaffected"
        )
    em = np.asarray(result.exact)
    f1 = np.asarray(result.f1)
    em_key = "exact" if v2 else "exact_match"
    est = bootstrap(
        lambda i: {em_key: 100.0 * em[i].mean(), "f1": 100.0 * f1[i].mean()},
        len(golds),
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    intervals = {k: (e.low, e.high) for k, e in est.items() if not math.isnan(e.low)}
    return ScoreOutput(result.totals, intervals, len(golds), source, warnings)


def score(task_name: str, predictions: Path, **kwargs: Any) -> ScoreOutput:
    from harness.families.registry import registry

    tasks = registry()
    qa = sorted(n for n, t in tasks.items() if t.family == "extractive_qa")
    if task_name not in tasks:
        raise ConfigError(
            f"`harness score` knows no metric or task '{task_name}'",
            f"score with a metric ({', '.join(TEXT_METRICS)}) or a QA task ({', '.join(qa)})",
        )
    task = tasks[task_name]
    if task.family != "extractive_qa":
        raise ConfigError(
            f"`harness score` does not score family '{task.family}' yet (task '{task_name}')",
            "score extractive QA tasks (squad, squad_v2), or use `harness eval` with a model",
        )
    return score_qa(task, predictions, **kwargs)


TEXT_METRICS = ("rouge", "bleu", "chrf")


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Examples of a `.jsonl` file (the `field` of each object; a newline inside a value separates sentences, for
    ROUGE-Lsum), or of any other file read as plain text, one example per line (as sacreBLEU reads system outputs
    such as `newstest2016.en-ro.output`); optionally gzipped."""
    from harness.data.files import json_lines
    from harness.data.squad import open_text

    if not path.is_file():
        raise DataError(f"file {path} does not exist", "pass the path of an existing file")
    text = open_text(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json"):
        raise DataError(
            f"{path}: a .json file holds one JSON value, not one example per line",
            "write JSON lines (.jsonl, one object per line) or plain text (one example per line)",
        )
    if not name.endswith(".jsonl"):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines = lines[:-1]  # the final newline ends the last line; it is not an empty example
        return [x.rstrip("\r") for x in lines]
    out = []
    for i, obj in json_lines(text, path):
        if not isinstance(obj.get(field), str):
            raise DataError(
                f"{path}: line {i} has no text field '{field}'",
                f"give each object a '{field}' string, or name the field with --field",
            )
        out.append(obj[field])
    return out


def score_texts(
    metric: str,
    predictions: Path,
    references: Path,
    field: str = "text",
    resamples: int = 1000,
    seed: int = 0,
    split: str = "auto",
    engine: str = "rouge-score",
) -> Any:
    from harness.metrics import generation

    hyps = read_texts(predictions, field)
    refs = read_texts(references, field)
    if len(refs) < len(hyps):
        raise DataError(
            f"{references} has {len(refs)} references but {predictions} has {len(hyps)} predictions",
            "give exactly one reference per prediction, in the same order",
        )
    if len(refs) > len(hyps):
        raise DataError(
            f"{predictions} has {len(hyps)} predictions but {references} has {len(refs)} references",
            "give exactly one prediction per reference, in the same order",
        )
    if metric == "rouge":
        return generation.rouge(hyps, refs, resamples=resamples, seed=seed, split=split, engine=engine)
    fn = {"bleu": generation.bleu, "chrf": generation.chrf}[metric]
    return fn(hyps, refs, resamples=resamples, seed=seed)
