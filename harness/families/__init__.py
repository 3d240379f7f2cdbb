"""Model families: what each family needs from a task file, and where its implementation lives.

This module is import-light on purpose (no torch), so `harness ls` and `harness validate` stay fast. A family's
implementation (DataModule, LightningModule, scoring) is imported only when a run needs it.

An engine-floor package; `registry` (the task registry: task folders, family defaults, `include:`) lives
here too. May import: the ground (config, errors, paths), metrics and the other engines (data, models, tracking),
the last only inside a family's functions. Never the run, the commands or the CLI.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

# metrics where lower is better; every other metric is maximised
LOWER_IS_BETTER = frozenset({"ece", "perplexity", "loss"})


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    description: str
    required_columns: tuple[str, ...]  # roles every task of this family maps to a data column
    optional_columns: tuple[str, ...]
    metrics: tuple[str, ...]  # metric names the family can compute
    main_metric: str  # a task's main metric unless its file names another
    needs_labels: bool
    impl: str  # "module:attribute" of the Family implementation
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()  # task `options` keys and their allowed values
    baselines: tuple[str, ...] = ()  # models that need no weights: `model.name=baseline:<name>`
    # what a search optimises when validation does not compute the task's main metric (e.g. generation would be
    # too slow there): (validation metric, direction)
    search_objective: Optional[tuple[str, str]] = None
    text_roles: tuple[str, ...] = ()  # roles that hold text: checked to be strings, counted when empty
    default_metrics: tuple[str, ...] = ()  # a task's metrics unless its file lists them (empty: all of `metrics`)
    # option value -> default metrics, for families whose metrics depend on a task option (SQuAD v1.1 / v2.0)
    option_metrics: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def metrics_for(self, options: dict) -> tuple[str, ...]:
        """The metrics a task of this family reports unless its file says otherwise."""
        for key, value, metrics in self.option_metrics:
            if str(options.get(key, "")) == value:
                return metrics
        return self.default_metrics or self.metrics


def direction_of(metric: str) -> str:
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


FAMILIES: dict[str, FamilyInfo] = {
    "classification": FamilyInfo(
        name="classification",
        description="sequence classification (AutoModelForSequenceClassification)",
        required_columns=("text", "label"),
        optional_columns=("text_pair",),
        metrics=("accuracy", "f1_macro", "auroc", "ece"),
        main_metric="accuracy",
        needs_labels=True,
        impl="harness.families.classification:ClassificationFamily",
        text_roles=("text", "text_pair"),
    ),
    "extractive_qa": FamilyInfo(
        name="extractive_qa",
        description="extractive question answering (AutoModelForQuestionAnswering), SQuAD v1.1/v2.0 EM and F1",
        required_columns=("id", "question", "context", "answers"),
        optional_columns=("title",),
        metrics=(
            "exact_match",
            "f1",
            "exact",
            "HasAns_exact",
            "HasAns_f1",
            "NoAns_exact",
            "NoAns_f1",
            "best_exact",
            "best_f1",
        ),
        main_metric="f1",
        needs_labels=False,
        impl="harness.families.qa:ExtractiveQAFamily",
        text_roles=("question", "context"),
        options=(("version", ("1.1", "2.0")),),
        baselines=("first-sentence",),
        default_metrics=("exact_match", "f1"),
        option_metrics=(
            (
                "version",
                "2.0",
                ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"),
            ),
        ),
    ),
    "summarization": FamilyInfo(
        name="summarization",
        description="abstractive summarization (encoder-decoder or decoder-only generation), ROUGE-1/2/L/Lsum",
        required_columns=("source", "target"),
        optional_columns=("id",),
        metrics=("rouge1", "rouge2", "rougeL", "rougeLsum"),
        main_metric="rougeLsum",
        needs_labels=False,
        impl="harness.families.generation:SummarizationFamily",
        text_roles=("source", "target"),
        baselines=("lead-3",),
        search_objective=("loss", "minimize"),
    ),
    "translation": FamilyInfo(
        name="translation",
        description="machine translation (encoder-decoder or decoder-only generation), sacreBLEU BLEU and chrF",
        required_columns=("source", "target"),
        optional_columns=("id",),
        metrics=("bleu", "chrf"),
        main_metric="bleu",
        needs_labels=False,
        impl="harness.families.generation:TranslationFamily",
        text_roles=("source", "target"),
        baselines=("copy-source",),
        search_objective=("loss", "minimize"),
    ),
    "causal_lm": FamilyInfo(
        name="causal_lm",
        description="causal language modelling (AutoModelForCausalLM), perplexity before and after training",
        required_columns=("text",),
        optional_columns=(),
        metrics=("perplexity", "loss"),
        main_metric="perplexity",
        needs_labels=False,
        impl="harness.families.lm:CausalLMFamily",
        text_roles=("text",),
        search_objective=("loss", "minimize"),
    ),
    "masked_lm": FamilyInfo(
        name="masked_lm",
        description="masked language modelling (AutoModelForMaskedLM), masked-token perplexity before and after",
        required_columns=("text",),
        optional_columns=(),
        metrics=("perplexity", "loss"),
        main_metric="perplexity",
        needs_labels=False,
        impl="harness.families.lm:MaskedLMFamily",
        text_roles=("text",),
        search_objective=("loss", "minimize"),
    ),
}


def search_objective(task) -> tuple[str, str]:
    """(validation metric without the `val_` prefix, direction) that `harness tune` optimises for a task."""
    info = FAMILIES.get(task.family)
    if info is not None and info.search_objective is not None:
        return info.search_objective
    return task.main_metric, task.direction


def get_family(name: str):
    """Instantiate the implementation of family `name` (imports torch and friends)."""
    info = FAMILIES[name]
    module_name, attr = info.impl.split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(info)
