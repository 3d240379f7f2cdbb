"""Sequence classification: a transformers backbone with a classification head (AutoModelForSequenceClassification).

One module for every classification task, parameterised by backbone and label set; metrics per validation epoch
come from torchmetrics, test outputs are per-example probabilities for scoring with confidence intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import MeanMetric
from transformers import AutoModelForSequenceClassification

from harness.metrics import classification as cls_metrics
from harness.models.base import HarnessModule
from harness.models.distill import hinton_loss, teacher_logits


class SequenceClassifier(HarnessModule):
    mask_4d = True  # the padding mask as SDPA takes it: no host-device sync per forward (HarnessModule.model_inputs)
    peft_task = "SEQ_CLS"
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    targets = {"labels": "label"}

    def __init__(
        self,
        labels: list[str],
        optim: dict[str, Any],
        metrics: Sequence[str] = cls_metrics.METRICS,
        ece_bins: int = 15,
        **backbone: Any,
    ):
        super().__init__(optim)
        self.save_hyperparameters()
        self.labels = list(labels)
        n = len(labels)
        # weights the checkpoint did not have (a new classification head): evaluating without training is then noise
        self.load_backbone(
            AutoModelForSequenceClassification,
            **backbone,
            num_labels=n,
            id2label=dict(enumerate(self.labels)),
            label2id={name: i for i, name in enumerate(self.labels)},
        )
        self.val_metrics = cls_metrics.collection(n, ece_bins, list(metrics)).clone(prefix="val_")
        self.val_loss = MeanMetric()

    # ---- distillation (harness compress --method distill) ---------------------------------------------------------
    _teacher: Any = None

    def distill_from(self, teacher: torch.nn.Module, temperature: float, alpha: float) -> None:
        """Train on Hinton's loss against `teacher` (frozen). Held in a tuple, so the teacher is not a submodule: it
        is neither optimized nor saved in checkpoints or the logged model."""
        teacher.eval().requires_grad_(False)
        self._teacher = (teacher, float(temperature), float(alpha))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._teacher is None:
            return super().training_step(batch, batch_idx)
        teacher, temperature, alpha = self._teacher
        inputs = {k: batch[k] for k in self.inputs if k in batch}
        student = self.model(**inputs).logits
        loss, soft, hard = hinton_loss(
            student, teacher_logits(teacher, inputs, student.device), batch["label"], temperature, alpha
        )
        n = len(batch["input_ids"])
        self.log("train_loss", self._global_loss(loss, n), on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log_dict(
            {"train_soft_loss": soft.detach(), "train_hard_loss": hard.detach()},
            on_step=True,
            on_epoch=False,
            batch_size=n,
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        probs = out.logits.float().softmax(-1)
        self.val_metrics.update(probs, batch["label"])
        self.val_loss.update(out.loss, weight=len(batch["label"]))

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        values["val_loss"] = self.val_loss.compute()
        # the torchmetrics values are already reduced over ranks; sync_dist only keeps Lightning's bookkeeping quiet
        self.log_dict(values, prog_bar=False, sync_dist=True)
        self.val_metrics.reset()
        self.val_loss.reset()

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self(batch)
        probs = out.logits.float().softmax(-1)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), batch["label"], reduction="none")
        return {"index": batch["_row"], "label": batch["label"], "probs": probs, "loss": loss}
