"""Transfer modes: which weights of a pretrained model a run trains (`model.mode`).

- `full`: every weight (the default);
- `frozen`: only the task head, on the encoder's features (the backbone's weights do not change);
- `lora`: low-rank adapters on the attention projections (peft's `LoraConfig`) plus the task head;
- `prompt_tuning`: a few trained virtual tokens prepended to every input (peft's `PromptTuningConfig`) plus the head.

The task head is every top-level module of the model that is not its backbone (`base_model_prefix`): e.g.
`classifier` for BERT's sequence classifier, `pre_classifier` + `classifier` for DistilBERT, `qa_outputs` for QA.
LoRA's target modules come from peft's table for the architecture (`model.lora_targets` overrides them); the
resolved list is stated on the run. Adapters are saved as adapters (the base model is named, not copied) unless
`model.merge=true` merges LoRA into a full model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from harness.errors import ConfigError

MODES = ("full", "frozen", "lora", "prompt_tuning")
LM_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM")
ADAPTER_MODES = ("lora", "prompt_tuning")
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class TransferInfo:
    mode: str
    trainable: int
    total: int
    head: list[str] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def params(self) -> dict[str, str]:
        out = {"model.head_modules": ",".join(self.head)}
        if self.lora_targets:
            out["model.lora_targets_resolved"] = ",".join(self.lora_targets)
        return out

    def metrics(self) -> dict[str, float]:
        return {
            "params_total": float(self.total),
            "params_trainable": float(self.trainable),
            "params_trainable_pct": self.trainable_pct,
        }


def head_modules(model: Any) -> list[str]:
    """Top-level modules with weights that are not the backbone: the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    return [
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters(recurse=True))
    ]


def count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; peft's wrapped copies of the head count once (the trained copy)."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:  # peft keeps the untouched head beside the trained copy
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def lora_targets(model: Any, asked: Optional[list[str]]) -> list[str]:
    """The modules LoRA adapts: asked for, else peft's choice for this architecture, else the attention's query and
    value projections found by name."""
    if asked:
        return list(asked)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

    model_type = getattr(model.config, "model_type", "")
    if model_type in TABLE:
        return list(TABLE[model_type])
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found = [n for n in ("q_proj", "v_proj", "query", "value", "q_lin", "v_lin", "c_attn") if n in names]
    if not found:
        raise ConfigError(
            f"no known attention projections to put LoRA on in a '{model_type}' model",
            "name them with model.lora_targets=[...] (the last part of nn.Linear module names)",
        )
    return found


def apply(model: Any, settings: Optional[dict[str, Any]], task_type: Optional[str]) -> tuple[Any, TransferInfo]:
    """Make `model` train as `settings['mode']` says; returns the (possibly wrapped) model and what it trains."""
    settings = settings or {}
    mode = settings.get("mode", "full")
    # a language-model head is pretrained (and often tied to the input embeddings): adapters train without it
    head = [] if task_type in LM_TASK_TYPES else head_modules(model)
    targets: list[str] = []
    if mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".", 1)[0] in head
    elif mode in ADAPTER_MODES:
        if task_type is None:
            raise ConfigError(f"model.mode={mode} is not available for this task's family", "use full or frozen")
        import peft

        ref = settings.get("base_ref") or model.config._name_or_path
        if mode == "lora":
            targets = lora_targets(model, settings.get("lora_targets"))
            config = peft.LoraConfig(
                task_type=task_type,
                r=settings.get("lora_r", 8),
                lora_alpha=settings.get("lora_alpha", 16),
                lora_dropout=settings.get("lora_dropout", 0.1),
                target_modules=targets,
                modules_to_save=list(head),  # peft extends the list it is given
            )
        else:
            config = peft.PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=settings.get("virtual_tokens", 20),
                modules_to_save=list(head),  # peft extends the list it is given
            )
        model = peft.get_peft_model(model, config)
        model.peft_config["default"].base_model_name_or_path = ref  # where the base comes from, not a cache path
    elif mode != "full":
        raise ConfigError(f"unknown model.mode '{mode}'", f"use one of {', '.join(MODES)}")
    trainable, total = count(model)
    return model, TransferInfo(mode, trainable, total, head, targets)


def saved_adapter(folder: str) -> Optional[dict[str, Any]]:
    """The adapter config of a folder holding a saved adapter, or None."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    if not config.get("base_model_name_or_path"):
        raise ConfigError(f"{path} does not name its base model", "save adapters with harness (log_model=true)")
    return config


def load_adapter(base: Any, adapter_dir: str, trainable: bool) -> Any:
    """A saved adapter on its base model (already loaded with the task's head shape)."""
    import peft

    return peft.PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)


def is_adapter(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save(model: Any, out_dir: Any, merge: bool) -> None:
    """A full model; an adapter as an adapter (adapter_config.json names its base) beside the base's config (task
    head shape, labels); or, with `merge`, LoRA merged into a full model (on a copy: the run's model stays as it is)."""
    if is_adapter(model):
        import peft

        if merge and isinstance(model.peft_config["default"], peft.LoraConfig):
            copy.deepcopy(model).merge_and_unload().save_pretrained(out_dir, safe_serialization=True)
            return
        model.get_base_model().config.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
