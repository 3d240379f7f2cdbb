"""Extractive QA: a transformers backbone with a span head (AutoModelForQuestionAnswering).

Span selection runs on the device, exactly: for every window, the `n_best` highest-scoring spans among all valid
ones (start and end inside the context, end >= start, at most `max_answer_length` tokens), scored start logit + end
logit, are found by scoring every (start, length) pair in one tensor operation, then mapped to character offsets.
Only those candidates leave the device. Validation reports EM/F1 (the official SQuAD definitions) per epoch.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torchmetrics import MeanMetric
from transformers import AutoModelForQuestionAnswering

from harness.models.base import HarnessModule

def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context: torch.Tensor, n_best: int,
               max_answer_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, start token, end token), each [B, n_best], best first, over all valid spans; invalid slots (fewer
    valid spans than n_best) have score -inf."""
    s, e = start_logits.float(), end_logits.float()
    b, length = s.shape
    k = min(max_answer_length, length)
    scores = torch.full((b, length, k), float("-inf"), device=s.device)
    for d in range(k):
        valid = context[:, : length - d] & context[:, d:]
        scores[:, : length - d, d] = torch.where(valid, s[:, : length - d] + e[:, d:], float("-inf"))
    top, idx = scores.view(b, -1).topk(min(n_best, length * k), dim=1)
    start = idx // k
    return top, start, start + idx % k


class QuestionAnswerer(HarnessModule):
    def __init__(
        self,
        model_path: str,
        optim: dict[str, Any],
        version_2: bool = False,
        n_best: int = 20,
        max_answer_length: int = 30,
        null_threshold: float = 0.0,
        dropout: Optional[float] = None,
        attn_implementation: Optional[str] = "sdpa",
        revision: Optional[str] = None,
        model_ref: Optional[str] = None,
        model_source: str = "local",
    ):
        super().__init__(optim)
        self.save_hyperparameters()
        self.version_2 = version_2
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.null_threshold = null_threshold
        self.load_backbone(AutoModelForQuestionAnswering, model_path, model_ref, model_source, revision, dropout,
                           attn_implementation)
        self.val_loss = MeanMetric()
        self._val_buffer: list[dict[str, torch.Tensor]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.model(**inputs, start_positions=batch.get("start_positions"),
                          end_positions=batch.get("end_positions"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        self.log("train_loss", out.loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["_row"]))
        return out.loss

    def candidates(self, batch: dict[str, torch.Tensor], out: Any) -> dict[str, torch.Tensor]:
        context = batch["offset_start"] >= 0
        score, start, end = best_spans(out.start_logits, out.end_logits, context, self.n_best,
                                       self.max_answer_length)
        ok = torch.isfinite(score)
        span_start = torch.where(ok, batch["offset_start"].gather(1, start), -1)
        span_end = torch.where(ok, batch["offset_end"].gather(1, end), -1)
        # the "no answer" score of a window: start and end both on the first token ([CLS])
        null = out.start_logits[:, 0].float() + out.end_logits[:, 0].float()
        return {"index": batch["_feature"], "example": batch["_row"], "span_score": score,
                "span_start": span_start, "span_end": span_end, "null_score": null}

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self(batch)
        res = self.candidates(batch, out)
        ce = torch.nn.functional.cross_entropy
        res["loss"] = (ce(out.start_logits.float(), batch["start_positions"], reduction="none")
                       + ce(out.end_logits.float(), batch["end_positions"], reduction="none")) / 2
        return res

    # ---- validation: loss and EM/F1 per epoch ----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_buffer = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        self.val_loss.update(out.loss, weight=len(batch["_row"]))
        self._val_buffer.append({k: v.detach() for k, v in self.candidates(batch, out).items()})

    def on_validation_epoch_end(self) -> None:
        values: dict[str, Any] = {"val_loss": self.val_loss.compute()}
        self.val_loss.reset()
        outputs = self._gather(self._val_buffer)  # every rank gets all windows, so every rank logs the same numbers
        self._val_buffer = []
        dm = getattr(self.trainer, "datamodule", None)
        if outputs and dm is not None and "validation" in dm.data.splits:
            from harness.families.qa import quick_scores

            values.update({f"val_{k}": v for k, v in quick_scores(outputs, dm.data["validation"], self.version_2,
                                                                  self.null_threshold).items()})
        self.log_dict(values, prog_bar=False, sync_dist=True)
