"""Extractive QA: a transformers backbone with a span head (AutoModelForQuestionAnswering).

Span selection runs on the device, exactly: for every window, the `n_best` highest-scoring spans among all valid
ones (start and end inside the context, end >= start, at most `max_answer_length` tokens), scored start logit + end
logit, are found by scoring every (start, length) pair in one tensor operation, then mapped to character offsets.
Only those candidates leave the device. Validation reports EM/F1 (the official SQuAD definitions) per epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric
from transformers import AutoModelForQuestionAnswering

from harness.data.qa import gold_texts, postprocess
from harness.data.sources import SplitData
from harness.metrics import squad
from harness.models.base import HarnessModule


def best_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, context: torch.Tensor, n_best: int, max_answer_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def quick_scores(outputs: dict[str, Any], split: SplitData, version_2: bool, null_threshold: float) -> dict[str, float]:
    """EM and F1 (0-100) of model outputs on a split, for validation during training."""
    preds = postprocess(outputs, split, version_2, null_threshold).frame
    golds = [squad.Gold(q, a) for q, a in zip(split.dataset["id"], gold_texts(split))]
    pmap = dict(zip(preds["id"], preds["prediction"]))
    if version_2:
        t = squad.score_v2(golds, pmap).totals
        return {"exact": t["exact"], "f1": t["f1"]}
    return squad.score_v1(golds, pmap).totals


class QuestionAnswerer(HarnessModule):
    mask_4d = True  # the padding mask as SDPA takes it: no host-device sync per forward (HarnessModule.model_inputs)
    peft_task = "QUESTION_ANS"
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    targets = {"start_positions": "start_positions", "end_positions": "end_positions"}

    def __init__(
        self,
        optim: dict[str, Any],
        version_2: bool = False,
        n_best: int = 20,
        max_answer_length: int = 30,
        null_threshold: float = 0.0,
        **backbone: Any,
    ):
        super().__init__(optim)
        self.save_hyperparameters()
        self.version_2 = version_2
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.null_threshold = null_threshold
        self.load_backbone(AutoModelForQuestionAnswering, **backbone)
        self.val_loss = MeanMetric()
        self._val_buffer: list[dict[str, torch.Tensor]] = []

    def candidates(self, batch: dict[str, torch.Tensor], out: Any) -> dict[str, torch.Tensor]:
        context = batch["offset_start"] >= 0
        score, start, end = best_spans(out.start_logits, out.end_logits, context, self.n_best, self.max_answer_length)
        ok = torch.isfinite(score)
        span_start = torch.where(ok, batch["offset_start"].gather(1, start), -1)
        span_end = torch.where(ok, batch["offset_end"].gather(1, end), -1)
        # the "no answer" score of a window: start and end both on the first token ([CLS])
        null = out.start_logits[:, 0].float() + out.end_logits[:, 0].float()
        return {
            "index": batch["_feature"],
            "example": batch["_row"],
            "span_score": score,
            "span_start": span_start,
            "span_end": span_end,
            "null_score": null,
        }

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self(batch)
        res = self.candidates(batch, out)
        ce = torch.nn.functional.cross_entropy
        res["loss"] = (
            ce(out.start_logits.float(), batch["start_positions"], reduction="none")
            + ce(out.end_logits.float(), batch["end_positions"], reduction="none")
        ) / 2
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
            values.update(
                {
                    f"val_{k}": v
                    for k, v in quick_scores(
                        outputs, dm.data["validation"], self.version_2, self.null_threshold
                    ).items()
                }
            )
        self.log_dict(values, prog_bar=False, sync_dist=True)
