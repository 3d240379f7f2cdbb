"""`harness check <task> [key=value ...]`: what a run of this task would read, without training or tracking.

The data is loaded exactly as `harness run` loads it (local files or the hub, derived and fallback splits, profile
subsets, schema checks), so every error a run would stop on shows up here first. Per split it prints the source,
the row count, the digest of exactly those rows, how they were selected, the label balance and two examples; then
it tokenizes a sample with the run's tokenizer and prints the token-length distribution of each text field against
its budget, with the share of examples that the budget cuts. This is what to run after writing a task file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from harness.config import RunConfig, TaskSpec
from harness.data.sources import SplitData, TaskData, load_task_data
from harness.families import get_family
from harness.models.loading import ResolvedModel, load_pretrained, resolve_model

SAMPLE = 512  # examples tokenized for the length report
SAMPLE_SEED = 0
EXAMPLE_CHARS = 160


@dataclass
class LengthReport:
    role: str
    budget: int
    beyond: str  # what happens to tokens beyond the budget
    lengths: np.ndarray

    @property
    def cut_share(self) -> float:
        return float((self.lengths > self.budget).mean()) if len(self.lengths) else 0.0


@dataclass
class CheckReport:
    task: TaskSpec
    cfg: RunConfig
    data: TaskData
    warnings: list[str] = field(default_factory=list)
    tokenizer: Optional[str] = None  # where the tokenizer came from; None for a baseline
    sample_split: Optional[str] = None
    lengths: list[LengthReport] = field(default_factory=list)


def check(task: TaskSpec, cfg: RunConfig) -> CheckReport:
    from harness.runtime import configure_runtime

    configure_runtime(cfg)
    family = get_family(task.family)
    model = resolve_model(cfg.model.name, cfg.model.revision, Path(cfg.tracking.output_dir) / "models")
    baseline = model.source == "baseline"
    if baseline:
        family.check_baseline(model.path)
    need = ("train", "validation", "test") if cfg.train and not baseline else ("test",)
    data = load_task_data(task, cfg, need)
    _, warnings = family.check_data(cfg, task, data)
    warnings += data.notes + data.quality_warnings()
    report = CheckReport(task, cfg, data, warnings)
    if baseline:
        return report
    from transformers import AutoTokenizer

    tok_ref = ResolvedModel(model.ref, family.tokenizer_path(model), model.source, revision=model.revision)
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tok_ref)
    report.tokenizer = tok_ref.path
    report.sample_split = "train" if "train" in data.splits else "test"
    split = data[report.sample_split]
    rng = np.random.default_rng(SAMPLE_SEED)
    rows = np.sort(rng.permutation(split.rows)[:SAMPLE]) if split.rows > SAMPLE else np.arange(split.rows)
    sample = split.dataset.select(rows)
    for role, budget, beyond in family.length_budgets(cfg, task):
        report.lengths.append(LengthReport(role, budget, beyond, token_lengths(tokenizer, sample, role)))
    return report


def token_lengths(tokenizer: Any, rows: Any, role: str) -> np.ndarray:
    """Token counts (special tokens included, nothing cut) of a text role, or of a pair of roles `a+b`."""
    parts = role.split("+")
    texts = [[str(x) for x in rows[p]] for p in parts]
    enc = tokenizer(*texts, add_special_tokens=True, truncation=False, verbose=False)
    return np.array([len(ids) for ids in enc["input_ids"]])


def label_balance(split: SplitData, labels: Optional[list[str]]) -> Optional[str]:
    if not labels or "label" not in split.dataset.column_names:
        return None
    counts = np.bincount(np.asarray(split.dataset["label"], dtype=np.int64), minlength=len(labels))
    return ", ".join(f"{name} {c:,} ({c / max(split.rows, 1):.1%})" for name, c in zip(labels, counts))


def _example(row: dict[str, Any], roles: list[str], labels: Optional[list[str]]) -> str:
    parts = []
    for role in roles:
        value = row.get(role)
        if role == "label" and labels and isinstance(value, (int, np.integer)):
            value = labels[int(value)]
        elif role == "answers" and isinstance(value, dict):
            value = value.get("text")
        text = " ".join(str(value).split())
        parts.append(f"{role}: {text[:EXAMPLE_CHARS]}{'…' if len(text) > EXAMPLE_CHARS else ''}")
    return " | ".join(parts)


def print_report(report: CheckReport, out: Callable[[str], None] = print) -> None:
    task, cfg = report.task, report.cfg
    out(f"{task.name} ({task.family}) · profile {cfg.profile} · task file {task.path}")
    roles = [r for r in task.columns if r != "title"]
    for name, split in report.data.splits.items():
        lin = report.data.lineage()[name]
        out(f"\n{name}: {split.rows:,} rows of {lin['source_rows']:,} · {split.source_kind} {split.source}")
        out(f"  digest {lin['digest']} · {lin['selection']}" + ("" if split.official else " · NOT the official split"))
        out(f"  empty texts {lin['empty_texts']:,} · duplicate rows {lin['duplicate_rows']:,}")
        balance = label_balance(split, task.labels)
        if balance:
            out(f"  labels: {balance}")
        for i in range(min(2, split.rows)):
            out(f"  example {i + 1}: {_example(split.dataset[i], roles, task.labels)}")
    if report.tokenizer is None:
        out("\ntokens: a baseline has no tokenizer")
    else:
        n = len(report.lengths[0].lengths) if report.lengths else 0
        out(f"\ntokens: {n:,} {report.sample_split} examples (seed {SAMPLE_SEED}), tokenizer {report.tokenizer}")
        for r in report.lengths:
            q = np.percentile(r.lengths, [50, 90, 99]) if len(r.lengths) else [0, 0, 0]
            out(
                f"  {r.role}: min {r.lengths.min() if n else 0} · median {q[0]:.0f} · p90 {q[1]:.0f} · p99 {q[2]:.0f} "
                f"· max {r.lengths.max() if n else 0} · budget {r.budget} · {r.cut_share:.1%} longer, {r.beyond}"
            )
    for w in report.warnings:
        out(f"warning: {w}")
    out("\nok: the data loads as a run would load it (nothing was trained, no MLflow run was made)")
