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

from harness.models.base import HarnessModule, target_tokens


class LanguageModel(HarnessModule):
    def __init__(self, model_path: str, optim: dict[str, Any], kind: str, from_scratch: bool = False,
                 config_overrides: Optional[dict[str, Any]] = None, dropout: Optional[float] = None,
                 attn_implementation: Optional[str] = "sdpa", revision: Optional[str] = None,
                 model_ref: Optional[str] = None, model_source: str = "local"):
        super().__init__(optim)
        self.save_hyperparameters()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

        from harness.models.loading import ResolvedModel, load_pretrained

        self.kind = kind
        auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
        if from_scratch:
            resolved = ResolvedModel(model_ref or model_path, model_path, model_source, revision=revision)
            config = load_pretrained(AutoConfig.from_pretrained, resolved)
            for k, v in (config_overrides or {}).items():
                if not hasattr(config, k):
                    from harness.errors import ConfigError

                    raise ConfigError(f"model.config_overrides: the {config.model_type} config has no '{k}'",
                                      "use a field of the model's config.json")
                setattr(config, k, v)
            if attn_implementation:
                config._attn_implementation = attn_implementation
            self.model = auto.from_config(config)
            self.newly_initialized = ["(all weights: from scratch)"]
            self.model.train()
        else:
            self.load_backbone(auto, model_path, model_ref, model_source, revision, dropout, attn_implementation)
        self.val_loss = MeanMetric()

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        self.log("train_loss", out.loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=len(batch["input_ids"]))
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        self.val_loss.update(out.loss.float(), weight=target_tokens(batch["labels"], self.kind == "causal"))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log_dict({"val_loss": loss, "val_perplexity": torch.exp(loss)}, prog_bar=False, sync_dist=True)
        self.val_loss.reset()

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"]
        if self.kind == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        scored = labels != -100
        return {"index": batch["_row"], "nll": (nll * scored).sum(1).double(), "tokens": scored.sum(1)}
