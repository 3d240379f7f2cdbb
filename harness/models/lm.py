"""Language-model pretraining modules: causal LM (AutoModelForCausalLM) and masked LM (AutoModelForMaskedLM),
continued from pretrained weights or from scratch (`model.from_scratch=true`, with `model.config_overrides` for a
smaller architecture).

Validation logs the token-weighted loss and perplexity; test outputs are, per document, the summed negative
log-likelihood of its scored tokens and their number, so perplexity (exp of the token-weighted mean NLL) gets a
bootstrap interval over documents.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torchmetrics import MeanMetric
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining

from harness.errors import ConfigError
from harness.models.base import HarnessModule, target_tokens
from harness.models.loading import ResolvedModel, load_pretrained


def _scratch_config(
    overrides: dict[str, Any],
    model_path: str,
    model_ref: Optional[str] = None,
    model_source: str = "local",
    revision: Optional[str] = None,
    attn_implementation: Optional[str] = "sdpa",
    **_: Any,
) -> Any:
    """The model's config with `model.config_overrides` applied, for random initial weights."""
    config = load_pretrained(
        AutoConfig.from_pretrained, ResolvedModel(model_ref or model_path, model_path, model_source, revision=revision)
    )
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise ConfigError(
                f"model.config_overrides: the {config.model_type} config has no '{k}'",
                "use a field of the model's config.json",
            )
        setattr(config, k, v)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


class LanguageModel(HarnessModule):
    def __init__(
        self,
        optim: dict[str, Any],
        kind: str,
        from_scratch: bool = False,
        config_overrides: Optional[dict[str, Any]] = None,
        nsp: bool = False,
        **backbone: Any,
    ):
        super().__init__(optim)
        self.save_hyperparameters()
        self.kind = kind
        self.nsp = nsp and kind == "masked"
        auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
        if self.nsp:  # BERT's two pretraining heads (masked tokens, next sentence) on sentence pairs
            auto = AutoModelForPreTraining
            self.inputs = ("input_ids", "attention_mask", "token_type_ids")
            self.targets = {"labels": "labels", "next_sentence_label": "nsp_label"}
            self.val_nsp = MeanMetric()
        if from_scratch:
            self.model = auto.from_config(_scratch_config(config_overrides or {}, **backbone))
            self.newly_initialized = ["(all weights: from scratch)"]
            self.model.train()
        else:
            self.load_backbone(auto, **backbone)
        self.val_loss = MeanMetric()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.nsp:  # the pretraining loss sums both heads; perplexity is the masked tokens' alone
            out = self.eval_outputs(batch)
            self.val_loss.update(
                out["nll"].sum().float() / out["tokens"].sum().clamp(min=1), weight=out["tokens"].sum()
            )
            self.val_nsp.update(out["nsp_correct"].float())
            return
        out = self(batch)
        self.val_loss.update(out.loss.float(), weight=target_tokens(batch["labels"], self.kind == "causal"))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        values = {"val_loss": loss, "val_perplexity": torch.exp(loss)}
        if self.nsp:
            values["val_nsp_accuracy"] = self.val_nsp.compute()
            self.val_nsp.reset()
        self.log_dict(values, prog_bar=False, sync_dist=True)
        self.val_loss.reset()

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in self.inputs if k in batch}
        out = self.model(**inputs)
        logits = (out.prediction_logits if self.nsp else out.logits).float()
        labels = batch["labels"]
        if self.kind == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        scored = labels != -100
        result = {"index": batch["_row"], "nll": (nll * scored).sum(1).double(), "tokens": scored.sum(1)}
        if self.nsp:
            result["nsp_correct"] = out.seq_relationship_logits.argmax(-1) == batch["nsp_label"]
        return result
