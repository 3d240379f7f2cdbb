"""Classification metrics through torchmetrics: accuracy, macro-F1, AUROC and expected calibration error.

ECE is the top-label calibration error of Guo et al. 2017 ("On Calibration of Modern Neural Networks"): predictions
are binned by their highest class probability (15 equal-width bins by default) and ECE is the bin-size-weighted mean
of |accuracy - confidence|. For two classes AUROC is the binary AUROC of the positive-class probability; for more,
the macro average of one-vs-rest AUROCs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassF1Score,
)
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
)

METRICS = ("accuracy", "f1_macro", "auroc", "ece")


def compute(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15, names=METRICS) -> dict[str, float]:
    """Metrics on class probabilities `probs` [n, C] and integer `labels` [n].

    >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> y = torch.tensor([0, 1, 1, 1])
    >>> {k: round(v, 4) for k, v in compute(p, y).items()}
    {'accuracy': 0.75, 'f1_macro': 0.7333, 'auroc': 1.0, 'ece': 0.3}
    """
    c = probs.shape[1]
    out: dict[str, float] = {}
    kw = dict(num_classes=c, validate_args=False)
    if "accuracy" in names:
        out["accuracy"] = float(multiclass_accuracy(probs, labels, average="micro", **kw))
    if "f1_macro" in names:
        out["f1_macro"] = float(multiclass_f1_score(probs, labels, average="macro", **kw))
    if "auroc" in names:
        if len(torch.unique(labels)) < 2:
            out["auroc"] = math.nan  # undefined with one class present
        elif c == 2:
            out["auroc"] = float(binary_auroc(probs[:, 1], labels, validate_args=False))
        else:
            out["auroc"] = float(multiclass_auroc(probs, labels, average="macro", **kw))
    if "ece" in names:
        out["ece"] = float(multiclass_calibration_error(probs, labels, n_bins=n_bins, norm="l1", **kw))
    return out


def estimates(
    probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int, names, resamples: int, confidence: float, seed: int
) -> dict[str, Any]:
    """`compute`'s metrics on all examples, each with its bootstrap interval (resampling examples)."""
    from harness.metrics.bootstrap import bootstrap

    probs = probs.double()  # 105/200 logs as 0.525, not float32's 0.5249999761581421

    def stats(i: np.ndarray) -> dict[str, float]:
        t = torch.as_tensor(i)
        return compute(probs[t], labels[t], n_bins=n_bins, names=names)

    return bootstrap(stats, len(labels), resamples=resamples, confidence=confidence, seed=seed)


def collection(num_classes: int, n_bins: int = 15, names=METRICS) -> MetricCollection:
    """Stateful versions for per-epoch validation (they sync across DDP ranks on compute)."""
    metrics: dict[str, Metric] = {}
    if "accuracy" in names:
        metrics["accuracy"] = MulticlassAccuracy(num_classes, average="micro")
    if "f1_macro" in names:
        metrics["f1_macro"] = MulticlassF1Score(num_classes, average="macro")
    if "auroc" in names:
        metrics["auroc"] = _PositiveAUROC() if num_classes == 2 else MulticlassAUROC(num_classes, average="macro")
    if "ece" in names:
        metrics["ece"] = MulticlassCalibrationError(num_classes, n_bins=n_bins, norm="l1")
    return MetricCollection(metrics)


class _PositiveAUROC(BinaryAUROC):
    """BinaryAUROC that takes [n, 2] probabilities like the other metrics of the collection."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(preds[:, 1], target)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and count of the top-label prediction (the data of a reliability diagram)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    # right-closed bins like torchmetrics: (e_i, e_{i+1}]
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def majority_floors(y: np.ndarray, label_names: list[str], names: tuple[str, ...]) -> list[Any]:
    """The scores of always predicting the commonest test label (AUROC: of any constant score, 0.5).

    >>> [(f.metric, round(f.value, 4)) for f in majority_floors(np.array([0, 1, 1, 1]), ["neg", "pos"], METRICS)]
    [('accuracy', 0.75), ('f1_macro', 0.4286), ('auroc', 0.5)]
    """
    from harness.metrics.bootstrap import Floor

    if len(y) == 0:
        return []
    counts = np.bincount(y, minlength=len(label_names))
    top = int(counts.argmax())
    share = counts[top] / len(y)
    what = f"always predicting '{label_names[top]}', the commonest test label"
    out = []
    if "accuracy" in names:
        out.append(Floor("accuracy", float(share), what))
    if "f1_macro" in names:  # F1 of the one class predicted, 0 for the others
        out.append(Floor("f1_macro", float(2 * share / (1 + share) / len(label_names)), what))
    if "auroc" in names and len(np.unique(y)) > 1:
        out.append(Floor("auroc", 0.5, "any constant score (chance)"))
    return out
