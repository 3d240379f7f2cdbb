"""Generation families: summarization (ROUGE) and translation (sacreBLEU BLEU and chrF).

One implementation for both; they differ in the metrics, the baseline, and the per-example score in the
predictions table. The model kind follows from the model itself: encoder-decoder configs (T5, BART, Marian,
`bert2bert:<encoder>`) train and generate as seq2seq, decoder-only causal LMs (SmolLM2, GPT-2, Llama) with a prompt.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from harness.config import RunConfig, TaskSpec
from harness.data.generation import GenerationDataModule
from harness.data.sources import SplitData, TaskData
from harness.errors import ModelError
from harness.families.base import EvalReport, Family, Floor, checkpoint_hyperparameters
from harness.metrics import generation as gen_metrics
from harness.models.generation import TextGenerator
from harness.models.loading import GENERATION_FITS, ResolvedModel, model_kind


class GenerationFamily(Family):
    module_class = TextGenerator

    def __init__(self, info: Any):
        super().__init__(info)
        self.kind: Optional[str] = None
        self.warm_start: Optional[str] = None
        self.tokenizer: Any = None
        self.decoder_start: Optional[int] = None

    # ---- model and data ------------------------------------------------------------------------------------------
    def bind_model(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, str]:
        if model.checkpoint:  # a harness checkpoint says what it is in its hyperparameters
            hp = checkpoint_hyperparameters(model.checkpoint)
            if hp.get("kind") not in ("seq2seq", "causal"):
                raise ModelError(
                    f"checkpoint {model.checkpoint} was not written by a {self.info.name} run",
                    f"pass a checkpoint of a summarization or translation run; {self.info.name} fits {GENERATION_FITS}",
                )
            self.kind, self.warm_start = hp["kind"], hp.get("warm_start")
        else:
            self.kind, self.warm_start = model_kind(model, self.info.name), model.warm_start
        return {"model.kind": self.kind, **({"model.warm_start": self.warm_start} if self.warm_start else {})}

    def _special_tokens(self, tokenizer: Any) -> tuple[int, Optional[int], Optional[int]]:
        """(pad, eos, decoder start) for this tokenizer and model kind; gives a causal LM a pad token if it has none."""
        if self.warm_start == "bert2bert":
            if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
                raise ModelError(
                    "bert2bert needs a tokenizer with [CLS] and [SEP] tokens", "warm-start from a BERT-style encoder"
                )
            return tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.cls_token_id
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ModelError(
                    "the tokenizer has neither a pad nor an end-of-sequence token",
                    "use a model whose tokenizer defines eos_token",
                )
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer.pad_token_id, tokenizer.eos_token_id, None

    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any) -> GenerationDataModule:
        self.tokenizer = tokenizer
        _, _, self.decoder_start = self._special_tokens(tokenizer)
        return GenerationDataModule(cfg, task, data, tokenizer, self.kind or "causal", self.decoder_start)

    def longest_inputs(self, cfg: RunConfig) -> list[tuple[str, int]]:
        g = cfg.generation
        out = max(g.max_target_length, g.max_new_tokens)
        if self.kind == "seq2seq":  # the encoder reads the source, the decoder writes the target
            return [
                ("generation.max_source_length", g.max_source_length),
                ("generation.max_target_length" if out == g.max_target_length else "generation.max_new_tokens", out),
            ]
        return [("generation.max_source_length + max(max_target_length, max_new_tokens)", g.max_source_length + out)]

    def length_budgets(self, cfg: RunConfig, task: TaskSpec) -> list[tuple[str, int, str]]:
        g = cfg.generation
        return [
            ("source", g.max_source_length, "cut at the end"),
            ("target", g.max_target_length, "cut at the end for training, scored in full"),
        ]

    def module_settings(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        pad, eos, start = self._special_tokens(self.tokenizer)
        return dict(
            generation=cfg.generation.model_dump(mode="json"),
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=start,
        )

    def module_args(self, cfg: RunConfig, task: TaskSpec, model: ResolvedModel) -> dict[str, Any]:
        return dict(kind=self.kind, warm_start=self.warm_start)

    def serving_meta(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        pad, eos, start = self._special_tokens(self.tokenizer)
        return {
            "kind": self.kind,
            "generation": cfg.generation.model_dump(mode="json"),
            "pad_token_id": pad,
            "eos_token_id": eos,
            "decoder_start_token_id": start,
        }

    # ---- outputs -------------------------------------------------------------------------------------------------
    def postprocess(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> Any:
        tokens = np.asarray(outputs["tokens"])
        texts = [
            self.tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True).strip() for row in tokens
        ]
        return pd.DataFrame(
            {
                "row": np.asarray(outputs["index"]),
                "hypothesis": texts,
                "gen_tokens": np.asarray(outputs["length"]),
                "hit_max": np.asarray(outputs["hit_max"]),
            }
        )

    def baseline_text(self, name: str, source: str) -> str:
        raise NotImplementedError

    def baseline_outputs(self, name: str, cfg: RunConfig, task: TaskSpec, split: SplitData) -> Any:
        self.check_baseline(name)
        hyps = [self.baseline_text(name, s) for s in split.dataset["source"]]
        return pd.DataFrame(
            {
                "row": split.dataset["_row"],
                "hypothesis": hyps,
                "gen_tokens": [np.nan] * len(hyps),
                "hit_max": [False] * len(hyps),
            }
        )

    # ---- scoring -------------------------------------------------------------------------------------------------
    def metric_results(self, cfg: RunConfig, hyps: list[str], refs: list[str]) -> list[gen_metrics.MetricResult]:
        raise NotImplementedError

    def example_score(self, results: list[gen_metrics.MetricResult]) -> tuple[str, np.ndarray]:
        raise NotImplementedError

    def score(self, cfg: RunConfig, task: TaskSpec, outputs: Any, split: SplitData) -> EvalReport:
        frame: pd.DataFrame = outputs
        ds = split.dataset
        rows = list(ds["_row"])
        by_row = frame.set_index("row")
        missing = [r for r in rows if r not in by_row.index]
        if missing:
            raise ModelError(f"{len(missing)} test examples got no output", "this is a bug; please report it")
        frame = by_row.loc[rows].reset_index()
        hyps = [str(h) for h in frame["hypothesis"]]
        refs = [str(r) for r in ds["target"]]
        sources = [str(s) for s in ds["source"]]
        results = self.metric_results(cfg, hyps, refs)
        estimates: dict[str, Any] = {}
        tags: dict[str, str] = {}
        warnings: list[str] = []
        for res in results:
            estimates.update(res.estimates)
            tags[f"metric.{res.name}.signature"] = res.signature
            warnings.extend(res.notes)
        n = len(hyps)
        scalars: dict[str, float] = {
            "examples": float(n),
            "empty_predictions": float(sum(1 for h in hyps if not h.strip())),
            "empty_references": float(sum(1 for r in refs if not r.strip())),
        }
        gen_tokens = np.asarray(frame["gen_tokens"], dtype=float)
        hit = np.asarray(frame["hit_max"], dtype=bool)
        budget = cfg.generation.max_new_tokens
        floors = [] if cfg.model.name.startswith("baseline:") else self.floors(cfg, sources, refs, results)
        below = [f for f in floors if f.metric in estimates and f.verdict(estimates[f.metric])[0] != "above"]
        if not np.isnan(gen_tokens).all():
            scalars["generated_tokens_mean"] = float(np.nanmean(gen_tokens))
            scalars["hit_max_new_tokens"] = float(hit.sum())
            warnings += _budget_warnings(hit, budget, below)
        score_name, per_example = self.example_score(results)
        chars = cfg.eval.prediction_text_chars
        src_words = np.array([len(s.split()) for s in sources])
        table = pd.DataFrame(
            {
                "row": rows,
                "source": [s[:chars] + ("…" if len(s) > chars else "") for s in sources],
                "reference": refs,
                "hypothesis": hyps,
                score_name: per_example,
                "source_words": src_words,
                "generated_tokens": gen_tokens,
                "hit_max_new_tokens": hit,
            }
        )
        if "id" in ds.column_names:
            table.insert(1, "id", list(ds["id"]))
        title = f"{task.name} / {split.name} ({n} examples)"
        from harness.tracking import plots

        if np.isnan(gen_tokens).all():  # a baseline: lengths in words, no budget
            hyp_len, ref_len, unit, line = (
                np.array([len(h.split()) for h in hyps]),
                np.array([len(r.split()) for r in refs]),
                "words",
                None,
            )
        else:
            ref_len = np.array([len(x) for x in self.tokenizer(refs, add_special_tokens=False)["input_ids"]])
            hyp_len, unit, line = gen_tokens, "tokens", budget
        figures = {
            "plots/generation_length.png": plots.length_histogram_figure(hyp_len, ref_len, unit, title, line),
            "plots/score_vs_source_length.png": plots.score_vs_length_figure(
                src_words, per_example, "source length (words)", score_name, title
            ),
        }
        return EvalReport(
            split.name, n, estimates, scalars, table, figures, task.main_metric, tags, warnings, floors=floors
        )

    def floors(
        self, cfg: RunConfig, sources: list[str], refs: list[str], results: Optional[list[Any]] = None
    ) -> list[Floor]:
        """The family's trivial system (lead-3, copying the source) scored on the same examples, the same way."""
        name = self.info.baselines[0]
        hyps = [self.baseline_text(name, s) for s in sources]
        what = {"lead-3": "lead-3, the first three sentences of the source", "copy-source": "copying the source"}
        quick = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"bootstrap_resamples": 1})})  # values only
        floor = self.metric_results(quick, hyps, refs)
        pairs = self.paired_floors(cfg, results, floor) if results is not None else {}
        out = []
        for res in floor:
            for metric, est in res.estimates.items():
                if metric in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"):
                    out.append(Floor(metric, est.value, what.get(name, name), pairs.get(metric)))
        return out

    def paired_floors(self, cfg: RunConfig, results: list[Any], floor: list[Any]) -> dict[str, tuple]:
        """Per metric, the run minus the floor on the same examples with a paired interval, where per-example scores
        make one (summarization; BLEU and chrF are corpus-level: their floors are values)."""
        return {}


def _budget_warnings(hit: np.ndarray, budget: int, below: list[Floor]) -> list[str]:
    """What generations that ran to the token budget mean: a budget too small, or (the result no better than the
    trivial system) outputs that ramble, which a larger budget will not fix."""
    n = len(hit)
    if below and hit.mean() > 0.25:
        return [
            f"{int(hit.sum())} of {n} generations ran to generation.max_new_tokens={budget} without ending, "
            f"and {', '.join(f.metric for f in below)} is not above the floor ({below[0].what}): the outputs "
            "ramble, which a larger budget will not fix; check the prompt (generation.prompt, chat template) "
            "or train the model"
        ]
    if hit.all():
        return [
            f"every generation ({n} of {n}) stopped at generation.max_new_tokens={budget} without "
            "an end-of-sequence token: the budget is too small (raise generation.max_new_tokens)"
        ]
    if hit.mean() > 0.25:
        return [
            f"{int(hit.sum())} of {n} generations stopped at generation.max_new_tokens={budget}; "
            "consider a larger budget"
        ]
    return []


class SummarizationFamily(GenerationFamily):
    def baseline_text(self, name: str, source: str) -> str:
        return gen_metrics.lead(source, 3)

    def metric_results(self, cfg: RunConfig, hyps: list[str], refs: list[str]) -> list[gen_metrics.MetricResult]:
        res = gen_metrics.rouge(
            hyps,
            refs,
            resamples=cfg.eval.bootstrap_resamples,
            confidence=cfg.eval.confidence,
            seed=cfg.seed,
            split=cfg.eval.rouge_split,
            engine=cfg.eval.rouge_engine,
        )
        # runs report ROUGE x100, as papers do (harness score rouge --json keeps rouge-score's 0-1)
        res.estimates = {k: type(v)(100 * v.value, 100 * v.low, 100 * v.high) for k, v in res.estimates.items()}
        res.signature += "|scale:x100"
        if cfg.eval.rouge_engine == "rouge-score" or cfg.eval.bootstrap_resamples <= 1:
            return [res]
        # papers' numbers are the run's; rouge-score's stay beside them, signed (F with its interval: rouge_score_*)
        other = gen_metrics.rouge(
            hyps,
            refs,
            resamples=cfg.eval.bootstrap_resamples,
            confidence=cfg.eval.confidence,
            seed=cfg.seed,
            split=cfg.eval.rouge_split,
            engine="rouge-score",
        )
        other.name, other.notes = "rouge_score", []
        other.estimates = {
            f"rouge_score_{k}": type(v)(100 * v.value, 100 * v.low, 100 * v.high)
            for k, v in other.estimates.items()
            if k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
        }
        other.signature += "|scale:x100"
        return [res, other]

    def paired_floors(self, cfg: RunConfig, results: list[Any], floor: list[Any]) -> dict[str, tuple]:
        """The run minus lead-3 on the same examples, per ROUGE type (x100), with its paired bootstrap interval."""
        from harness.metrics import paired

        out = {}
        for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            a, b = {kind: floor[0].per_example[kind]}, {kind: results[0].per_example[kind]}
            r = paired.paired_bootstrap(
                paired.mean_of(kind, 100.0),
                a,
                b,
                resamples=max(cfg.eval.bootstrap_resamples, 1),
                seed=cfg.seed,
                confidence=cfg.eval.confidence,
            )
            out[kind] = (r.delta, r.ci_low, r.ci_high, r.p_value)
        return out

    def example_score(self, results: list[gen_metrics.MetricResult]) -> tuple[str, np.ndarray]:
        return "rougeL", 100 * results[0].per_example["rougeL"]


class TranslationFamily(GenerationFamily):
    def baseline_text(self, name: str, source: str) -> str:
        return source

    def metric_results(self, cfg: RunConfig, hyps: list[str], refs: list[str]) -> list[gen_metrics.MetricResult]:
        kw = dict(resamples=cfg.eval.bootstrap_resamples, confidence=cfg.eval.confidence, seed=cfg.seed)
        b = gen_metrics.bleu(hyps, refs, **kw)
        c = gen_metrics.chrf(hyps, refs, **kw)
        c.notes = []  # the same counts as BLEU's
        return [b, c]

    def example_score(self, results: list[gen_metrics.MetricResult]) -> tuple[str, np.ndarray]:
        return "sentence_chrf", results[1].per_example["sentence_chrf"]
