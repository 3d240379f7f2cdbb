"""Text generation modules: encoder-decoder (AutoModelForSeq2SeqLM, or a bert2bert EncoderDecoderModel
warm-started from one encoder) and decoder-only (AutoModelForCausalLM).

Both train with teacher forcing (cross-entropy on target tokens only), report the token-weighted validation loss
and perplexity per epoch, and generate for the test split with the run's `generation` settings (greedy or beam
search, never sampling, so a run is reproducible). Test outputs are the new tokens of every example, padded with
-1 to `max_new_tokens`, plus how many were generated and whether the budget ran out before an end-of-sequence.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torchmetrics import MeanMetric, SumMetric
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, EncoderDecoderModel

from harness.models.base import HarnessModule, target_tokens
from harness.models.loading import ResolvedModel, load_pretrained

KINDS = ("seq2seq", "causal")


class TextGenerator(HarnessModule):
    def __init__(
        self,
        optim: dict[str, Any],
        kind: str,
        generation: dict[str, Any],
        pad_token_id: int,
        eos_token_id: Optional[int],
        decoder_start_token_id: Optional[int] = None,
        warm_start: Optional[str] = None,
        **backbone: Any,
    ):
        super().__init__(optim)
        self.save_hyperparameters()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.generation = dict(generation)
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.peft_task = "CAUSAL_LM" if kind == "causal" else "SEQ_2_SEQ_LM"  # adapter modes (lora, prompt tuning)
        if warm_start == "bert2bert":
            if backbone.get("transfer"):
                from harness.errors import ConfigError

                raise ConfigError(
                    "model.mode: adapters on a bert2bert model starting from an encoder are not supported (its "
                    "cross-attention is new and must train in full)",
                    "use model.mode=full for bert2bert, or adapters on a pretrained generator",
                )
            self._load_bert2bert(**backbone)
        else:
            auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
            self.load_backbone(auto, **backbone)
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = pad_token_id
        self.val_loss = MeanMetric()
        self.val_tokens = SumMetric()

    def _load_bert2bert(
        self,
        model_path: str,
        model_ref: Optional[str] = None,
        model_source: str = "local",
        revision: Optional[str] = None,
        dropout: Optional[float] = None,
        **_: Any,
    ) -> None:
        """Encoder and decoder both start from the encoder's weights (Rothe et al. 2020); the decoder gets causal
        self-attention and new cross-attention layers (listed in `newly_initialized`)."""
        resolved = ResolvedModel(model_ref or model_path, model_path, model_source, revision=revision)
        kwargs: dict[str, Any] = {}
        if dropout is not None:
            kwargs.update(encoder_hidden_dropout_prob=dropout, decoder_hidden_dropout_prob=dropout)
        model = load_pretrained(
            lambda p, **kw: EncoderDecoderModel.from_encoder_decoder_pretrained(p, p, **kw), resolved, **kwargs
        )
        model.config.decoder_start_token_id = self.decoder_start_token_id
        model.config.pad_token_id = self.pad_token_id
        model.config.eos_token_id = self.eos_token_id
        model.config.vocab_size = model.config.decoder.vocab_size
        self.model = model
        self.newly_initialized = sorted(n for n, _ in model.named_parameters() if "crossattention" in n)
        self.model.train()

    # ---- training ------------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        # the model's loss is the mean over this batch's target tokens; weight it by their number
        n = target_tokens(batch["labels"], self.kind == "causal")
        self.val_loss.update(out.loss.float(), weight=n)
        self.val_tokens.update(n)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log_dict(
            {"val_loss": loss, "val_perplexity": torch.exp(loss), "val_target_tokens": self.val_tokens.compute()},
            prog_bar=False,
            sync_dist=True,
        )
        self.val_loss.reset()
        self.val_tokens.reset()

    # ---- generation ----------------------------------------------------------------------------------------------
    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        g = self.generation
        beams = int(g["num_beams"])
        kwargs: dict[str, Any] = dict(
            max_new_tokens=int(g["max_new_tokens"]),
            min_new_tokens=int(g["min_new_tokens"]) or None,
            num_beams=beams,
            do_sample=False,
            no_repeat_ngram_size=int(g["no_repeat_ngram_size"]),
            repetition_penalty=float(g["repetition_penalty"]),
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )
        if beams > 1:
            kwargs.update(length_penalty=float(g["length_penalty"]), early_stopping=bool(g["early_stopping"]))
        if self.kind == "seq2seq":
            start = self.decoder_start_token_id
            if start is None:
                start = getattr(self.model.config, "decoder_start_token_id", None)
            kwargs["decoder_start_token_id"] = start
        return GenerationConfig(**{k: v for k, v in kwargs.items() if v is not None})

    @torch.no_grad()
    def generate_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """New tokens [B, max_new_tokens] (-1 after the end), their count, and whether the budget ran out."""
        budget = int(self.generation["max_new_tokens"])
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config()
        )
        new = out[:, input_ids.shape[1] :] if self.kind == "causal" else out[:, 1:]  # drop prompt / decoder start
        new = new[:, :budget]
        width = new.shape[1]
        # a row ends at its first end-of-sequence token (generate pads finished rows after it)
        if self.eos_token_id is not None and width:
            is_end = new == self.eos_token_id
            ended = is_end.any(dim=1)
            length = torch.where(ended, is_end.int().argmax(dim=1), torch.full_like(ended, width, dtype=torch.long))
        else:
            ended = torch.zeros(len(new), dtype=torch.bool, device=new.device)
            length = torch.full((len(new),), width, dtype=torch.long, device=new.device)
        keep = torch.arange(width, device=new.device)[None, :] < length[:, None]
        tokens = torch.full((len(new), budget), -1, dtype=torch.long, device=new.device)
        tokens[:, :width] = torch.where(keep, new, -1)
        return {"tokens": tokens, "length": length, "hit_max": ~ended & (length >= budget)}

    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        res = self.generate_tokens(batch["input_ids"], batch["attention_mask"])
        res["index"] = batch["_row"]
        return res
