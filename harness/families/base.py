"""The contract between the runner and a model family.

The runner owns everything that is the same for every family (config, data lineage, MLflow run, Trainer, resume);
a family supplies the DataModule, the LightningModule, and turns test outputs into a report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.config import RunConfig, TaskSpec
from harness.data.sources import SplitData, TaskData
from harness.errors import ConfigError, ModelError
from harness.families import FamilyInfo
from harness.metrics.bootstrap import Estimate, Floor
from harness.models import transfer
from harness.models.loading import ResolvedModel, load_checkpoint, load_pretrained


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
    floors: list[Floor] = field(default_factory=list)  # trivial systems' scores on the same examples

    def metrics(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, est in self.estimates.items():
            out.update(est.as_dict(f"{prefix}{name}"))
        out.update({f"{prefix}{k}": v for k, v in self.scalars.items()})
        out.update({f"{prefix}{f.metric}_floor": f.value for f in self.floors})
        return out

    def floor_tags(self) -> dict[str, str]:
        """`floor.<metric>`: what the floor is and where the run stands against it."""
        out = {}
        for f in self.floors:
            est = self.estimates.get(f.metric)
            if est is not None:
                out[f"floor.{f.metric}"] = f"{f.value:.4f} ({f.what}): {f.verdict(est)[0]}"
        return out


def untrained_error(model: ResolvedModel, module: Any) -> ModelError:
    """Evaluating weights nobody trained (a new task head, cross-attention, from-scratch weights) measures noise."""
    return ModelError(
        f"model '{model.ref}' has untrained weights ({', '.join(module.newly_initialized[:3])}), and train=false "
        "evaluates it as is",
        "evaluate a fine-tuned model (runs:/<run_id>, a saved folder or a .ckpt), or set train=true",
    )


class Family(ABC):
    """A model family. The runner calls the hooks in this order: `check_data`, `bind_model`, `tokenizer_path`,
    `build_datamodule`, `build_module`, then after testing `postprocess` and `score` (or `baseline_outputs` and
    `score` for a baseline), and `export` for a logged model."""

    module_class: Any = None  # the family's LightningModule (a HarnessModule)
    # score the test split before training as well, so one run shows what training changed (pretraining families)
    evaluate_before_training: bool = False

    def __init__(self, info: FamilyInfo):
        self.info = info

    # ---- data ----------------------------------------------------------------------------------------------------
    def check_data(self, cfg: RunConfig, task: TaskSpec, data: TaskData) -> tuple[dict[str, str], list[str]]:
        """Family-specific checks of loaded data: (tags for the run, warnings for the console). Raise DataError for
        data the family cannot use."""
        return {}, []

    @abstractmethod
    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any) -> Any: ...

    def length_budgets(self, cfg: RunConfig, task: TaskSpec) -> list[tuple[str, int, str]]:
        """(role, token budget, what happens beyond it) for each text role, for `harness check`."""
        return [("text", cfg.data.max_length, "truncated")]

    # ---- model ---------------------------------------------------------------------------------------------------
    def check_baseline(self, name: str) -> None:
        """A `baseline:<name>` model must be one of this family's baselines."""
        if name not in self.info.baselines:
            known = ", ".join(f"baseline:{b}" for b in self.info.baselines) or "none"
            raise ModelError(
                f"family '{self.info.name}' has no baseline '{name}'", f"baselines of this family: {known}"
            )

    def bind_model(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, str]:
        """Called once the model is resolved, before data is tokenized: check the model fits this family (raise
        ModelError naming what fits) and return tags describing it."""
        return {}

    def longest_inputs(self, cfg: RunConfig) -> list[tuple[str, int]]:
        """(setting, tokens) for the longest sequences the model will read; checked against its position limit."""
        if cfg.model.mode == "prompt_tuning":  # the virtual tokens take positions before the text
            return [("data.max_length + model.virtual_tokens", cfg.data.max_length + cfg.model.virtual_tokens)]
        return [("data.max_length", cfg.data.max_length)]

    def check_position_limit(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> None:
        """Refuse, before any tokenizing or training, lengths the model has no position embeddings for (they fail
        mid-training with a tensor-size error otherwise)."""
        from transformers import AutoConfig

        backbone = ResolvedModel(model.ref, self.tokenizer_path(model), model.source, revision=model.revision)
        config = load_pretrained(AutoConfig.from_pretrained, backbone)
        if cfg.model.from_scratch:
            for k, v in cfg.model.config_overrides.items():
                setattr(config, k, v)
        limit = position_limit(config)
        for setting, need in self.longest_inputs(cfg):
            if limit is not None and need > limit:
                raise ConfigError(
                    f"{setting}={need} is longer than model '{model.ref}' can read: {limit} positions "
                    f"({config.model_type}, max_position_embeddings)",
                    f"set {setting} to {limit} or less",
                )

    def tokenizer_path(self, model: ResolvedModel) -> str:
        """Where the tokenizer lives; for a Lightning checkpoint, the backbone it was trained from."""
        if model.checkpoint:
            return checkpoint_hyperparameters(model.checkpoint)["model_path"]
        return model.path

    def module_settings(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        """Module arguments taken from this run's config, also when a checkpoint is loaded (they replace the saved
        ones): evaluation settings, the task's metrics."""
        return {}

    def module_args(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, Any]:
        """Module arguments of a new module only (a checkpoint has its own): labels, model kind."""
        return {}

    def check_module(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel, module: Any) -> None:  # noqa: B027
        """Checks once the module exists (e.g. its labels against the task's); none by default."""

    def build_module(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> Any:
        """The family's LightningModule: loaded from a harness checkpoint, or built on the model's weights."""
        optim = cfg.optim.model_dump(mode="json")
        settings = self.module_settings(cfg, task)
        if model.checkpoint:
            checkpoint_hyperparameters(model.checkpoint)  # refuses an unsafe or unreadable file in the user's words
            module = self.module_class.load_from_checkpoint(
                model.checkpoint, map_location="cpu", weights_only=True, optim=optim, **settings
            )
        else:
            module = self.module_class(
                optim=optim, **settings, **self.module_args(cfg, task, model), **backbone_args(cfg, model)
            )
            if not cfg.train and module.newly_initialized:
                raise untrained_error(model, module)
        self.check_module(cfg, task, model, module)
        return module

    # ---- outputs -------------------------------------------------------------------------------------------------
    def postprocess(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> Any:
        """Model test outputs -> what `score` takes (e.g. spans over windows -> one answer per question)."""
        return outputs

    def baseline_outputs(self, name: str, cfg: RunConfig, task: TaskSpec, split: SplitData) -> Any:
        """What `score` takes, from a baseline that needs no model (`model.name=baseline:<name>`)."""
        self.check_baseline(name)
        raise NotImplementedError(f"family '{self.info.name}' lists baseline '{name}' but does not implement it")

    @abstractmethod
    def score(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> EvalReport: ...

    def serving_meta(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        """What a served model needs besides the weights to answer as the run's evaluation did (in harness.json)."""
        return {}

    def export(self, module: Any, tokenizer: Any, out_dir: Path, merge: bool = False) -> None:
        """Write the trained model as a folder (safetensors + tokenizer), loadable by harness and by transformers'
        from_pretrained; an adapter (LoRA, prompt tuning) as an adapter beside its base model's config, unless
        `merge`."""
        transfer.save(module.model, out_dir, merge)
        tokenizer.save_pretrained(out_dir)


def backbone_args(cfg: RunConfig, model: ResolvedModel) -> dict[str, Any]:
    """What a module needs to load its backbone (saved flat in its hyperparameters)."""
    return dict(
        model_path=model.path,
        model_ref=model.ref,
        model_source=model.source,
        revision=model.revision,
        dropout=cfg.model.dropout,
        attn_implementation=cfg.model.attn_implementation,
        **({"transfer": cfg.model.transfer()} if cfg.model.mode != "full" else {}),
    )


def checkpoint_hyperparameters(path: str) -> dict[str, Any]:
    """A harness checkpoint's hyperparameters, read through mmap (the weights and optimizer state stay on disk)."""
    return load_checkpoint(path, mmap=True).get("hyper_parameters", {})


def position_limit(config: Any) -> Optional[int]:
    """How many token positions a model has embeddings for; None for relative positions (T5) or no limit known."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int):
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod"):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1  # positions start after the padding index
    return limit
