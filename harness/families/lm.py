"""Language-model pretraining families: causal LM and masked LM, scored by perplexity on held-out documents.

A run evaluates the model on the test documents before training and after, so one run shows what (continued)
pretraining did: `test_before_perplexity` next to `test_perplexity`, each with a 95% bootstrap interval over
documents (perplexity = exp(total NLL / total tokens), recomputed per resample). For masked LMs the perplexity is
over the masked tokens, with the same fixed masks before and after.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.config import RunConfig, TaskSpec
from harness.data.lm import LMDataModule
from harness.data.sources import SplitData, TaskData
from harness.errors import ConfigError, ModelError
from harness.families.base import EvalReport, Family
from harness.metrics.bootstrap import Estimate, bc_interval
from harness.models.lm import LanguageModel
from harness.models.loading import ResolvedModel, load_pretrained, model_kind


class LanguageModelFamily(Family):
    module_class = LanguageModel
    kind = "causal"
    evaluate_before_training = True

    def bind_model(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, str]:
        if model.warm_start:
            raise ModelError(f"'{model.ref}': bert2bert is for generation tasks", "give an encoder or a causal LM")
        if model.checkpoint:
            return {"model.kind": self.kind}
        from transformers import AutoConfig

        config = load_pretrained(AutoConfig.from_pretrained, model)
        mtype = getattr(config, "model_type", "?")
        if self.kind == "causal":
            try:
                kind = model_kind(model, self.info.name)
            except ModelError:
                kind = None
            if kind != "causal":
                raise ModelError(
                    f"model '{model.ref}' ({mtype}) is not a decoder-only causal LM",
                    "causal-LM pretraining fits GPT-2, Llama, SmolLM2 and the like; for BERT-style "
                    "encoders use a masked-LM task (e.g. mlm_imdb)",
                )
        else:
            from transformers import MODEL_FOR_MASKED_LM_MAPPING

            if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
                raise ModelError(
                    f"model '{model.ref}' ({mtype}) has no masked-LM architecture",
                    "masked-LM pretraining fits BERT, RoBERTa, DistilBERT, MiniLM and the like; for "
                    "decoder-only models use a causal-LM task (e.g. clm_imdb)",
                )
            if cfg.data.nsp:
                _check_nsp(cfg, model.ref, config)
        return {"model.kind": self.kind, **({"model.from_scratch": "true"} if cfg.model.from_scratch else {})}

    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any) -> LMDataModule:
        if self.kind == "causal" and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return LMDataModule(cfg, task, data, tokenizer, self.kind)

    def length_budgets(self, cfg: RunConfig, task: TaskSpec) -> list[tuple[str, int, str]]:
        how = "packed: training text is cut into blocks of this size" if cfg.data.packing else "truncated"
        return [("text", cfg.data.max_length, how + "; evaluation documents are truncated")]

    def module_args(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, Any]:
        if cfg.model.from_scratch and not cfg.train:
            raise ModelError(
                "model.from_scratch=true with train=false evaluates random weights",
                "set train=true, or drop model.from_scratch",
            )
        args = dict(kind=self.kind, from_scratch=cfg.model.from_scratch, config_overrides=cfg.model.config_overrides)
        return {**args, "nsp": True} if self.kind == "masked" and cfg.data.nsp else args

    def score(self, cfg: RunConfig, task: TaskSpec, outputs: Any, split: SplitData) -> EvalReport:
        ds = split.dataset
        pos = {int(r): i for i, r in enumerate(ds["_row"])}
        n = len(pos)
        nll = np.zeros(n)
        tokens = np.zeros(n)
        for r, v, t in zip(np.asarray(outputs["index"]), np.asarray(outputs["nll"]), np.asarray(outputs["tokens"])):
            nll[pos[int(r)]], tokens[pos[int(r)]] = float(v), float(t)
        keep = tokens > 0
        if not keep.any():
            raise ModelError("no test tokens were scored", "check the test split's text column")
        point = float(np.exp(nll[keep].sum() / tokens[keep].sum()))
        rng = np.random.default_rng(cfg.seed)
        idx = rng.integers(0, n, size=(cfg.eval.bootstrap_resamples, n))
        draws = np.exp(nll[idx].sum(1) / np.maximum(tokens[idx].sum(1), 1))
        lo, hi = bc_interval(draws, point, cfg.eval.confidence)
        loss = float(nll[keep].sum() / tokens[keep].sum())
        estimates = {
            "perplexity": Estimate(point, lo, hi),
            "loss": Estimate(loss, float(np.log(lo)), float(np.log(hi))),
        }
        nsp = _nsp_correct(outputs, pos, n)
        if nsp is not None:  # next-sentence accuracy over the documents' pairs, resampled with the same documents
            has = ~np.isnan(nsp)
            value = float(nsp[has].mean())
            acc = np.nansum(nsp[idx], 1) / np.maximum(has[idx].sum(1), 1)
            estimates["nsp_accuracy"] = Estimate(value, *bc_interval(acc, value, cfg.eval.confidence))
        chars = cfg.eval.prediction_text_chars
        doc_ppl = np.where(keep, np.exp(nll / np.maximum(tokens, 1)), np.nan)
        table = pd.DataFrame(
            {
                "row": ds["_row"],
                "text": [t[:chars] for t in ds["text"]],
                "tokens": tokens,
                "nll": nll,
                "perplexity": doc_ppl,
                **({"nsp_correct": nsp} if nsp is not None else {}),
            }
        )
        from harness.tracking import plots

        fig = plots.histogram_figure(
            np.log(doc_ppl[keep]), "log perplexity per document", f"{task.name} / {split.name} ({n} documents)"
        )
        scalars = {"documents": float(n), "tokens": float(tokens.sum())}
        return EvalReport(
            split.name, n, estimates, scalars, table, {"plots/document_perplexity.png": fig}, task.main_metric
        )


def _nsp_correct(outputs: Any, pos: dict[int, int], n: int) -> Any:
    """Per document: 1.0 if its pair's next-sentence call was right, 0.0 if wrong, NaN without a pair."""
    if "nsp_correct" not in outputs:
        return None
    out = np.full(n, np.nan)
    for r, c in zip(np.asarray(outputs["index"]), np.asarray(outputs["nsp_correct"])):
        out[pos[int(r)]] = float(c)
    return out


def _check_nsp(cfg: RunConfig, ref: str, config: Any) -> None:
    """data.nsp=true needs a model with BERT's next-sentence head and segment embeddings."""
    import inspect

    from transformers import MODEL_FOR_PRETRAINING_MAPPING

    cls = MODEL_FOR_PRETRAINING_MAPPING.get(type(config), None)
    if cls is None or "next_sentence_label" not in inspect.signature(cls.forward).parameters:
        raise ModelError(
            f"data.nsp=true: model '{ref}' ({config.model_type}) has no next-sentence-prediction head",
            "use a BERT-style model (BertForPreTraining: BERT, MiniLM), or drop data.nsp",
        )
    if getattr(config, "type_vocab_size", 2) < 2:
        raise ModelError(
            f"data.nsp=true: model '{ref}' has {config.type_vocab_size} segment embedding(s), pairs need 2",
            "use a BERT-style model with type_vocab_size 2, or drop data.nsp",
        )
    if cfg.data.whole_word_masking:
        raise ConfigError(
            "data.nsp=true with data.whole_word_masking=true is not supported",
            "drop one of them (sentence pairs mask single tokens)",
        )


class CausalLMFamily(LanguageModelFamily):
    kind = "causal"


class MaskedLMFamily(LanguageModelFamily):
    kind = "masked"
