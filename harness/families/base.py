"""The contract between the runner and a model family.

The runner owns everything that is the same for every family (config, data lineage, MLflow run, Trainer, resume);
a family supplies the DataModule, the LightningModule, and turns test outputs into a report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig, TaskSpec
from harness.data.sources import SplitData, TaskData
from harness.families import FamilyInfo
from harness.metrics.bootstrap import Estimate
from harness.models.loading import ResolvedModel


@dataclass
class EvalReport:
    split: str
    n: int
    estimates: dict[str, Estimate]  # metric -> value with its confidence interval
    scalars: dict[str, float] = field(default_factory=dict)  # further numbers without an interval (e.g. loss)
    table: Any = None  # pandas DataFrame, one row per example
    figures: dict[str, Any] = field(default_factory=dict)  # artifact path -> matplotlib figure
    main_metric: str = ""
    tags: dict[str, str] = field(default_factory=dict)  # set on the run (e.g. metric signatures)
    warnings: list[str] = field(default_factory=list)  # printed and tagged (e.g. empty outputs, budget too small)

    def metrics(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, est in self.estimates.items():
            out.update(est.as_dict(f"{prefix}{name}"))
        out.update({f"{prefix}{k}": v for k, v in self.scalars.items()})
        return out


class Family(ABC):
    def __init__(self, info: FamilyInfo):
        self.info = info

    def check_data(self, cfg: RunConfig, task: TaskSpec, data: TaskData) -> tuple[dict[str, str], list[str]]:
        """Family-specific checks of loaded data: (tags for the run, warnings for the console). Raise DataError for
        data the family cannot use."""
        return {}, []

    def bind_model(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, str]:
        """Called once the model is resolved, before data is tokenized: check the model fits this family (raise
        ModelError naming what fits) and return tags describing it."""
        return {}

    @abstractmethod
    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any) -> Any: ...

    @abstractmethod
    def build_module(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> Any: ...

    def postprocess(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> Any:
        """Model test outputs -> what `score` takes (e.g. spans over windows -> one answer per question)."""
        return outputs

    def baseline_outputs(self, name: str, cfg: RunConfig, task: TaskSpec, split: SplitData) -> Any:
        """What `score` takes, from a baseline that needs no model (`model.name=baseline:<name>`)."""
        from harness.errors import ModelError

        raise ModelError(f"family '{self.info.name}' has no baseline '{name}'", "use a trained model")

    @abstractmethod
    def score(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> EvalReport: ...

    def tokenizer_path(self, model: ResolvedModel) -> str:
        """Where the tokenizer lives; for a Lightning checkpoint, the backbone it was trained from."""
        if model.checkpoint:
            import torch

            # mmap: only the hyperparameters are read here, not the weights and optimizer state
            ckpt = torch.load(model.checkpoint, map_location="cpu", weights_only=True, mmap=True)
            return ckpt["hyper_parameters"]["model_path"]
        return model.path

    def export(self, module: Any, tokenizer: Any, out_dir: Path) -> None:
        """Write the trained model as a self-contained folder (safetensors + tokenizer), loadable by harness and
        by transformers' from_pretrained."""
        module.model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
