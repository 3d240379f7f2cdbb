"""Figures logged with runs: confusion matrix, reliability diagram, per-group bar charts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

from typing import Any, Optional  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.metrics.classification import reliability_bins  # noqa: E402


def confusion_matrix_figure(labels: np.ndarray, preds: np.ndarray, names: list[str], title: str) -> plt.Figure:
    k = len(names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    row = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row, out=np.zeros_like(cm, dtype=float), where=row > 0)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * k, 1.2 + 1.0 * k), dpi=120)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{share[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return fig


def reliability_figure(probs: np.ndarray, labels: np.ndarray, n_bins: int, ece: float, title: str) -> plt.Figure:
    b = reliability_bins(probs, labels, n_bins)
    edges, count = b["edges"], b["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 5.5), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    has = count > 0
    ax.bar(centers[has], b["accuracy"][has], width=width * 0.95, color="#4c72b0", label="accuracy", edgecolor="white")
    ax.bar(
        centers[has],
        (b["confidence"] - b["accuracy"])[has],
        bottom=b["accuracy"][has],
        width=width * 0.95,
        color="#dd8452",
        alpha=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\nECE = {ece:.4f} ({n_bins} bins, top-label)", fontsize=10)
    axh.bar(centers, count, width=width * 0.95, color="#55a868")
    axh.set_xlabel("confidence (top-label probability)")
    axh.set_ylabel("examples")
    axh.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def grouped_bar_figure(
    groups: Any, values: np.ndarray, xlabel: str, ylabel: str, title: str, order: Optional[list[str]] = None
) -> plt.Figure:
    """Mean of `values` per group, with each group's count on its bar and a 95% normal-approximation interval."""
    groups = np.asarray(list(groups), dtype=object)
    values = np.asarray(values, dtype=float)
    present = list(dict.fromkeys(groups.tolist()))
    if order:
        names = [g for g in order if g in present] + sorted(g for g in present if g not in order)
    else:
        counts = {g: int((groups == g).sum()) for g in present}
        names = sorted(present, key=lambda g: -counts[g])
    means, errs, ns = [], [], []
    for g in names:
        v = values[groups == g]
        means.append(v.mean())
        errs.append(1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
        ns.append(len(v))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(names) + 2), 3.6), dpi=120)
    m, err = np.asarray(means), np.asarray(errs)
    yerr = [np.minimum(err, m), np.minimum(err, 100 - m)]  # the interval clipped to the metric's range [0, 100]
    bars = ax.bar(range(len(names)), means, yerr=yerr, capsize=3, color="#4C72B0")
    for b, n in zip(bars, ns):
        ax.text(b.get_x() + b.get_width() / 2, 1, f"n={n}", ha="center", va="bottom", fontsize=7, color="white")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def length_histogram_figure(
    hyp_lengths: np.ndarray, ref_lengths: np.ndarray, unit: str, title: str, budget: Optional[int] = None
) -> plt.Figure:
    """How long the outputs are next to the references; a dashed line marks the generation budget."""
    hyp = np.asarray(hyp_lengths, dtype=float)
    ref = np.asarray(ref_lengths, dtype=float)
    top = max(float(np.max(hyp, initial=1)), float(np.max(ref, initial=1)), float(budget or 0))
    bins = np.linspace(0, top + 1, 31)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.hist(ref, bins=bins, alpha=0.5, label=f"reference (mean {ref.mean():.1f})", color="#55A868")
    ax.hist(hyp, bins=bins, alpha=0.6, label=f"generated (mean {hyp.mean():.1f})", color="#4C72B0")
    if budget:
        ax.axvline(budget, color="#C44E52", linestyle="--", linewidth=1, label=f"budget ({budget} tokens)")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def score_vs_length_figure(
    lengths: np.ndarray, scores: np.ndarray, xlabel: str, ylabel: str, title: str, bins: int = 8
) -> plt.Figure:
    """Per-example score against source length, with the mean per length bin (equal-count bins)."""
    x = np.asarray(lengths, dtype=float)
    y = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.scatter(x, y, s=6, alpha=0.35, color="#4C72B0", label="example")
    if len(x) >= 2 * bins:
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        centers = [x[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        means = [y[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        ax.plot(centers, means, color="#C44E52", marker="o", linewidth=1.5, label="bin mean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def histogram_figure(values: np.ndarray, xlabel: str, title: str, bins: int = 30) -> plt.Figure:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.hist(v, bins=bins, color="#4C72B0")
    if len(v):
        ax.axvline(
            float(np.median(v)), color="#C44E52", linestyle="--", linewidth=1, label=f"median {float(np.median(v)):.2f}"
        )
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
