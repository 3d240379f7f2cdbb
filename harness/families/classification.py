"""Sequence classification family: sentiment (IMDB, SST-2) and any text(-pair) -> label task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.config import RunConfig, TaskSpec
from harness.data.classification import ClassificationDataModule
from harness.data.sources import SplitData, TaskData
from harness.errors import ModelError
from harness.families.base import EvalReport, Family
from harness.metrics import classification as cls_metrics
from harness.models.classification import SequenceClassifier
from harness.models.loading import ResolvedModel
from harness.tracking import plots


class ClassificationFamily(Family):
    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any):
        return ClassificationDataModule(cfg, task, data, tokenizer)

    module_class = SequenceClassifier

    def length_budgets(self, cfg: RunConfig, task: TaskSpec) -> list[tuple[str, int, str]]:
        how = {"head": "cut at the end", "tail": "cut at the start", "head_tail": "cut in the middle"}
        if "text_pair" in task.columns:
            return [("text+text_pair", cfg.data.max_length, "the longer text is cut first")]
        return [("text", cfg.data.max_length, how[cfg.data.truncation])]

    def module_settings(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        return {"metrics": list(task.metrics or []), "ece_bins": cfg.eval.ece_bins}

    def module_args(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, Any]:
        return {"labels": list(task.labels or [])}

    def check_module(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel, module: SequenceClassifier) -> None:
        labels = list(task.labels or [])
        if model.checkpoint:
            _check_labels(module.labels, labels, model.ref)
            return
        trained = getattr(module.model.config, "id2label", None)
        if not cfg.train and trained:
            _check_labels([trained[i] for i in sorted(trained)], labels, model.ref)

    def score(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> EvalReport:
        probs = outputs["probs"].float()
        labels = outputs["label"].long()
        index = outputs["index"].long().numpy()
        n = len(labels)
        names = tuple(task.metrics)
        bins = cfg.eval.ece_bins

        e = cfg.eval
        estimates = cls_metrics.estimates(
            probs,
            labels,
            n_bins=bins,
            names=names,
            resamples=e.bootstrap_resamples,
            confidence=e.confidence,
            seed=cfg.seed,
        )
        p, y = probs.numpy(), labels.numpy()
        pred = p.argmax(1)
        label_names = list(task.labels or [])
        table = _predictions_table(
            split, index, y, pred, p, outputs["loss"].numpy(), label_names, cfg.eval.prediction_text_chars
        )
        title = f"{task.name} / {split.name} ({n} examples)"
        figures = {
            "plots/confusion_matrix.png": plots.confusion_matrix_figure(y, pred, label_names, title),
            "plots/reliability_diagram.png": plots.reliability_figure(
                p, y, bins, estimates["ece"].value if "ece" in estimates else float("nan"), title
            ),
        }
        scalars = {"loss": float(outputs["loss"].mean()), "examples": float(n)}
        floors = cls_metrics.majority_floors(y, label_names, names)
        return EvalReport(split.name, n, estimates, scalars, table, figures, task.main_metric, floors=floors)


def _check_labels(model_labels: list[str], task_labels: list[str], ref: str) -> None:
    generic = all(str(x).startswith("LABEL_") for x in model_labels)
    if len(model_labels) != len(task_labels) or (not generic and list(model_labels) != list(task_labels)):
        raise ModelError(
            f"model '{ref}' predicts labels {list(model_labels)}, but the task's labels are {task_labels}",
            "evaluate it on a task with the same label set (same names, same order)",
        )


def _predictions_table(
    split: SplitData,
    index: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    p: np.ndarray,
    loss: np.ndarray,
    names: list[str],
    chars: int,
) -> pd.DataFrame:
    rows = np.asarray(split.dataset["_row"])
    pos = np.empty(rows.max() + 1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    texts = split.dataset["text"]
    table = {
        "row": index,
        "text": [texts[pos[i]][:chars] for i in index],
        "label": [names[i] for i in y],
        "prediction": [names[i] for i in pred],
        "probability": p[np.arange(len(p)), pred],
        "correct": pred == y,
        "loss": loss,
    }
    if len(names) <= 10:
        for j, name in enumerate(names):
            table[f"p_{name}"] = p[:, j]
    return pd.DataFrame(table)
