"""Extractive QA family: SQuAD v1.1 and v2.0 (and any task in their format), scored with the official EM/F1."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from harness.config import RunConfig, TaskSpec
from harness.data.qa import QADataModule, first_sentence, gold_texts, postprocess, unlocatable_answers
from harness.data.sources import SplitData, TaskData
from harness.data.squad import check_version, is_v2
from harness.families.base import EvalReport, Family
from harness.metrics import squad
from harness.metrics.bootstrap import Estimate, bootstrap
from harness.models.qa import QuestionAnswerer


class ExtractiveQAFamily(Family):
    module_class = QuestionAnswerer

    def check_data(self, cfg: RunConfig, task: TaskSpec, data: TaskData) -> tuple[dict[str, str], list[str]]:
        """Tags for the run and warnings for the console: file version against the task, gold offsets."""
        tags: dict[str, str] = {}
        warnings: list[str] = []
        for name, split in data.splits.items():
            if "squad_version" in split.meta:
                check_version(
                    split.meta["squad_version"],
                    int(split.meta.get("unanswerable", 0)),
                    is_v2(task),
                    task.name,
                    split.source,
                )
                tags[f"data.{name}.squad_version"] = str(split.meta["squad_version"])
            off, missing = unlocatable_answers(split)
            if off or missing:
                tags[f"data.{name}.answer_start_mismatch"] = str(off + missing)
                msg = f"{name}: {off + missing} gold answer(s) have an answer_start that does not point at their text"
                if missing:
                    msg += f"; {missing} of them do not occur in the context at all"
                msg += " (training uses the nearest occurrence of the text; scoring uses the text only"
                msg += ", and questions whose text is missing are left out of training)" if missing else ")"
                warnings.append(msg)
        return tags, warnings

    def build_datamodule(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any) -> QADataModule:
        return QADataModule(cfg, task, data, tokenizer)

    def length_budgets(self, cfg: RunConfig, task: TaskSpec) -> list[tuple[str, int, str]]:
        return [
            (
                "question+context",
                cfg.data.max_length,
                f"split into overlapping windows (stride {cfg.data.doc_stride} tokens)",
            )
        ]

    def module_settings(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        e = cfg.eval
        return dict(
            version_2=is_v2(task),
            n_best=e.n_best,
            max_answer_length=e.max_answer_length,
            null_threshold=e.null_threshold,
        )

    def serving_meta(self, cfg: RunConfig, task: TaskSpec) -> dict[str, Any]:
        e = cfg.eval
        return {
            "doc_stride": cfg.data.doc_stride,
            "version_2": is_v2(task),
            "n_best": e.n_best,
            "max_answer_length": e.max_answer_length,
            "null_threshold": e.null_threshold,
        }

    def postprocess(self, cfg: RunConfig, task: TaskSpec, outputs: dict[str, Any], split: SplitData) -> Any:
        frame = postprocess(outputs, split, is_v2(task), cfg.eval.null_threshold).frame
        loss = pd.Series(np.asarray(outputs["loss"], dtype=np.float64)).groupby(np.asarray(outputs["example"])).mean()
        frame["loss"] = frame["row"].map(loss).to_numpy()
        return frame

    def baseline_outputs(self, name: str, cfg: RunConfig, task: TaskSpec, split: SplitData) -> Any:
        self.check_baseline(name)  # first-sentence: the context's first sentence as the answer
        spans = [first_sentence(c) for c in split.dataset["context"]]
        return pd.DataFrame(
            {"row": split.dataset["_row"], "id": split.dataset["id"], "prediction": spans, "best_span": spans}
        )

    def score(self, cfg: RunConfig, task: TaskSpec, outputs: Any, split: SplitData) -> EvalReport:
        frame: pd.DataFrame = outputs
        v2 = is_v2(task)
        answers = gold_texts(split)
        golds = [squad.Gold(q, a) for q, a in zip(split.dataset["id"], answers)]
        preds = dict(zip(frame["id"], frame["prediction"]))
        result = squad.score_v2(golds, preds) if v2 else squad.score_v1(golds, preds)
        best = None
        if v2 and "score_diff" in frame:
            # thresholds tuned on this data, as the official script does given no-answer scores: the candidate
            # answers are the best non-null spans, the "no-answer probability" is null score - span score
            spans = dict(zip(frame["id"], frame["best_span"]))
            diffs = dict(zip(frame["id"], frame["score_diff"].astype(float)))
            best = (squad.score_v2(golds, spans, na_probs=diffs), _best_threshold_arrays(golds, spans, diffs))
        estimates = _estimates(cfg, task, result, best)
        em, f1 = np.asarray(result.exact, dtype=np.float64), np.asarray(result.f1, dtype=np.float64)
        has = np.asarray(result.has_answer, dtype=bool)
        n = len(golds)
        scalars: dict[str, float] = {"examples": float(n)}
        if v2:
            scalars.update({"HasAns_total": float(has.sum()), "NoAns_total": float((~has).sum())})
            if best is not None:
                scalars.update({f"{k}_thresh": float(best[0].totals[f"{k}_thresh"]) for k in ("best_exact", "best_f1")})
        if "loss" in frame:
            scalars["loss"] = float(np.nanmean(frame["loss"]))
        table = _table(split, frame, em, f1, answers, cfg.eval.prediction_text_chars)
        figures = _figures(table, f1, f"{task.name} / {split.name} ({n} questions)")
        return EvalReport(split.name, n, estimates, scalars, table, figures, task.main_metric)


def _estimates(cfg: RunConfig, task: TaskSpec, result: Any, best: Optional[tuple[Any, dict]]) -> dict[str, Estimate]:
    """EM and F1 (v2.0: also HasAns/NoAns and, given no-answer scores, the best-threshold EM/F1), each the official
    total with a bootstrap interval over questions."""
    v2 = is_v2(task)
    em, f1 = np.asarray(result.exact, dtype=np.float64), np.asarray(result.f1, dtype=np.float64)
    has = np.asarray(result.has_answer, dtype=bool)
    n = len(em)
    em_key = "exact" if v2 else "exact_match"

    def mean(x: np.ndarray, i: np.ndarray) -> float:
        return 100.0 * x[i].mean() if len(i) else float("nan")

    def stats(i: np.ndarray) -> dict[str, float]:
        out = {em_key: mean(em, i), "f1": mean(f1, i)}
        if v2:
            h, nh = i[has[i]], i[~has[i]]
            out.update(HasAns_exact=mean(em, h), HasAns_f1=mean(f1, h), NoAns_exact=mean(em, nh), NoAns_f1=mean(f1, nh))
            if best is not None:
                w = np.bincount(i, minlength=n)
                out.update(best_exact=_best_score(best[1], "exact", w), best_f1=_best_score(best[1], "f1", w))
        return out

    e = cfg.eval
    estimates = bootstrap(stats, n, resamples=e.bootstrap_resamples, confidence=e.confidence, seed=cfg.seed)
    # point values are the official totals (same numbers, summed in file order)
    totals = {**result.totals, **({k: best[0].totals[k] for k in ("best_exact", "best_f1")} if best else {})}
    for k, v in totals.items():
        if k in estimates:
            estimates[k] = Estimate(float(v), estimates[k].low, estimates[k].high)
    return {k: v for k, v in estimates.items() if k in (task.metrics or []) or not np.isnan(v.value)}


def _figures(table: pd.DataFrame, f1: np.ndarray, title: str) -> dict[str, Any]:
    from harness.tracking import plots

    lengths = ["no answer", "1", "2", "3", "4-5", "6-10", "11+"]
    return {
        "plots/f1_by_answer_length.png": plots.grouped_bar_figure(
            table["answer_length"], f1 * 100, "gold answer length (words)", "F1", title, order=lengths
        ),
        "plots/f1_by_question_type.png": plots.grouped_bar_figure(
            table["question_type"], f1 * 100, "question type", "F1", title
        ),
    }


def _best_threshold_arrays(golds: list[squad.Gold], spans: dict[str, str], diffs: dict[str, float]) -> dict:
    """Per question (in no-answer-score order): what admitting its prediction changes, for the vectorised
    best-threshold search used in bootstrap resamples."""
    has = np.array([bool(g.answers) for g in golds])
    ex = np.zeros(len(golds))
    f = np.zeros(len(golds))
    for i, g in enumerate(golds):
        if g.qid in spans:
            ex[i], f[i] = squad.per_question_v2(spans[g.qid], g.answers)
    nonempty = np.array([bool(spans.get(g.qid, "")) for g in golds])
    order = np.argsort(np.array([diffs.get(g.qid, -np.inf) for g in golds]), kind="stable")
    penalty = np.where(nonempty, -1.0, 0.0)
    return {"order": order, "has": has, "exact": np.where(has, ex, penalty), "f1": np.where(has, f, penalty)}


def _best_score(a: dict, key: str, weights: np.ndarray) -> float:
    w = weights[a["order"]].astype(np.float64)
    start = float((weights * ~a["has"]).sum())
    steps = np.cumsum(w * a[key][a["order"]])
    return 100.0 * (start + max(0.0, float(steps.max()) if len(steps) else 0.0)) / weights.sum()


def _length_bucket(answers: list[str]) -> str:
    if not answers:
        return "no answer"
    n = len(squad.normalize_answer(answers[0]).split()) or len(answers[0].split())
    if n <= 3:
        return str(max(n, 1))
    return "4-5" if n <= 5 else ("6-10" if n <= 10 else "11+")


def _table(
    split: SplitData, frame: pd.DataFrame, em: np.ndarray, f1: np.ndarray, answers: list[list[str]], chars: int
) -> pd.DataFrame:
    ds = split.dataset
    pred = dict(zip(frame["id"], frame["prediction"]))
    questions = ds["question"]
    contexts = ds["context"]
    snippets = []
    for ctx, ans in zip(contexts, ds["answers"]):
        start = ans["answer_start"][0] if ans["answer_start"] else 0
        lo = max(0, start - chars // 2)
        snippets.append(("…" if lo else "") + ctx[lo : lo + chars] + ("…" if lo + chars < len(ctx) else ""))
    ids = list(ds["id"])
    table = pd.DataFrame(
        {
            "row": ds["_row"],
            "id": ids,
            "question": questions,
            "context": snippets,
            "gold_answers": [" | ".join(dict.fromkeys(a)) for a in answers],
            "prediction": [pred.get(q, "") for q in ids],
            "exact": em,
            "f1": f1,
            "question_type": [squad.question_type(q) for q in questions],
            "answer_length": [_length_bucket(a) for a in answers],
        }
    )
    for col in ("span_score", "null_score", "score_diff", "loss"):
        if col in frame:
            table[col] = frame.set_index("id")[col].reindex(ids).to_numpy()
    return table
