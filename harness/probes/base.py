"""What every bias probe shares: its file (`tasks/<name>/probe.yaml`), the model under test, results.

A probe is a YAML file (data location, metrics, published references) plus a small module with two functions:
`load(spec, data_dir, limit) -> (rows, warnings)` and `evaluate(lm, rows, settings) -> ProbeResult`. Malformed
rows are counted, reported and skipped, never silently dropped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from harness.config import Reference, Strict, error_text, load_yaml
from harness.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:  # numpy, pandas and the metrics (numpy) load with the probe that uses them, not with `validate`
    import pandas as pd

    from harness.metrics.bootstrap import Estimate

KINDS = ("causal", "masked", "classifier")


class ProbeData(Strict):
    local_dir: Optional[str] = None  # under the data directory
    files: list[str] = []  # file names or glob patterns inside local_dir
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: Optional[str] = None


class ProbeSpec(Strict):
    name: str
    module: str  # harness.probes.<module>
    description: str
    fits: list[str]  # model kinds the probe can score: causal, masked, classifier
    data: ProbeData = ProbeData()
    metrics: list[str]
    main_metric: str
    ideal: Optional[float] = None  # the unbiased value of the main metric (e.g. 50 for CrowS-Pairs)
    reading: Optional[str] = None  # what the main metric measures, in one line (printed beside the result)
    chance: dict[str, float] = {}  # metric -> what guessing scores (e.g. 50 for a choice of two): the floor
    references: list[Reference] = []
    options: dict[str, Any] = {}
    path: Optional[str] = None


@dataclass
class Settings:
    batch_size: int = 32
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    limit: Optional[int] = None  # score only the first N examples (a quick look; the run is tagged)


@dataclass
class ProbeResult:
    estimates: dict[
        str, Estimate
    ]  # flat: overall and per-category metrics, e.g. metric_score / race-color/metric_score
    categories: pd.DataFrame  # one row per (category, metric): value, ci_low, ci_high, n
    table: pd.DataFrame  # one row per example
    scalars: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    main_metric: str = ""
    ideal: Optional[float] = None


@dataclass
class LM:
    kind: str
    model: Any
    tokenizer: Any
    ref: str
    source: str
    run_id: Optional[str] = None


def all_specs() -> dict[str, ProbeSpec]:
    """Every `probe.yaml` in the task folders (harness.paths.task_dirs), by name."""
    from harness.families.registry import scan_folders

    return scan_folders("probe.yaml", load_spec, "probe")


def load_spec(path: Path) -> ProbeSpec:
    data = load_yaml(path)
    data.setdefault("name", path.parent.name)
    try:
        spec = ProbeSpec.model_validate({**data, "path": str(path)})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: field '{loc}': {error_text(err)}", "fix the probe file") from None
    bad = [k for k in spec.fits if k not in KINDS]
    if bad:
        raise ConfigError(f"{path}: field 'fits': unknown model kind(s) {bad}", f"use some of {', '.join(KINDS)}")
    if spec.main_metric not in spec.metrics:
        raise ConfigError(
            f"{path}: field 'main_metric': '{spec.main_metric}' is not one of the probe's metrics "
            f"({', '.join(spec.metrics)})",
            "name one of them",
        )
    return spec


def probe_module(spec: ProbeSpec) -> Any:
    return importlib.import_module(f"harness.probes.{spec.module}")


def load_lm(name: str, revision: Optional[str] = None, cache: Optional[Path] = None, device: str = "auto") -> LM:
    """The model under test and what kind it is: a causal LM, a masked LM (with its MLM head), or a classifier."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from harness.models.loading import load_pretrained, model_kind, resolve_model

    resolved = resolve_model(name, revision, cache)
    if resolved.source == "baseline" or resolved.warm_start or resolved.checkpoint:
        raise ModelError(f"model '{name}' cannot be probed", "probe a model folder, a hub id or runs:/<run id>")
    config = load_pretrained(AutoConfig.from_pretrained, resolved)
    archs = list(getattr(config, "architectures", None) or [])
    mtype = getattr(config, "model_type", "?")
    if any(a.endswith("ForSequenceClassification") for a in archs):
        kind, auto = "classifier", AutoModelForSequenceClassification
    elif any(a.endswith("ForMaskedLM") for a in archs):
        kind, auto = "masked", AutoModelForMaskedLM
    else:
        try:
            kind = model_kind(resolved, "probe")
        except ModelError:
            raise ModelError(
                f"model '{name}' ({mtype}, architectures {archs or 'unknown'}) has no language-model or "
                "classification head to probe",
                "probe a causal LM (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), a masked LM with its MLM head "
                "(e.g. bert-base-uncased online), or a sentiment classifier (runs:/<run id> of make eval TASK=imdb)",
            ) from None
        if kind != "causal":
            raise ModelError(
                f"model '{name}' is an encoder-decoder model; the probes score causal or masked LMs and classifiers",
                "probe a causal or masked LM, or a classifier",
            )
        auto = AutoModelForCausalLM
    model = load_pretrained(auto.from_pretrained, resolved)
    tok = load_pretrained(AutoTokenizer.from_pretrained, resolved)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"  # only placement differs (.to(device)) from a CPU run
    model.to(device).eval()
    return LM(kind, model, tok, name, resolved.source, resolved.run_id)


def category_frame(estimates: dict[str, Estimate], counts: dict[str, int], metrics: list[str]) -> pd.DataFrame:
    """Rows (category, metric, value, ci_low, ci_high, n) from flat estimates named `<category>/<metric>`."""
    import pandas as pd

    rows = []
    for key, est in estimates.items():
        cat, _, metric = key.rpartition("/")
        if metric in metrics:
            cat = cat or "overall"
            rows.append(
                {
                    "category": cat,
                    "metric": metric,
                    "value": est.value,
                    "ci_low": est.low,
                    "ci_high": est.high,
                    "n": counts.get(cat, 0),
                }
            )
    return pd.DataFrame(rows)


def bar_figure(categories: pd.DataFrame, metric: str, title: str, ideal: Optional[float] = None) -> Any:
    """One bar per category for `metric`, with its bootstrap interval and the unbiased ideal as a line."""
    import numpy as np

    from harness.tracking.plots import plt  # pyplot on the Agg backend

    d = categories[categories["metric"] == metric].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(d) + 2), 3.8), dpi=120)
    colors = ["#C44E52" if c == "overall" else "#4C72B0" for c in d["category"]]
    low = np.clip(d["value"] - d["ci_low"], 0, None).fillna(0)
    high = np.clip(d["ci_high"] - d["value"], 0, None).fillna(0)
    ax.bar(range(len(d)), d["value"], yerr=[low, high], capsize=3, color=colors)
    for i, n in enumerate(d["n"]):
        ax.text(i, 0, f"n={n}", ha="center", va="bottom", fontsize=7, color="white")
    if ideal is not None:
        ax.axhline(ideal, color="black", linestyle="--", linewidth=1, label=f"ideal ({ideal:g})")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(d)), d["category"], rotation=35, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def data_paths(spec: ProbeSpec, data_dir: Optional[Path], override: Optional[Path] = None) -> list[Path]:
    """The probe's local files (sorted), or the user's file/folder; a DataError saying where it looked."""
    if override is not None:
        override = override.expanduser().resolve()
        if override.is_file():
            return [override]
        if override.is_dir():
            found = sorted({p for pat in spec.data.files for p in override.glob(pat)})
            if found:
                return found
        raise DataError(
            f"probe '{spec.name}': {override} holds none of {spec.data.files}",
            "pass a file or a folder with the probe's files",
        )
    if data_dir is None or spec.data.local_dir is None:
        return []
    folder = data_dir / spec.data.local_dir
    return sorted({p for pat in spec.data.files for p in folder.glob(pat)})
