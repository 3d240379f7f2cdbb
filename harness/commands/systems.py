"""What `harness compare` compares: MLflow runs (their logged per-example predictions) or output files made anywhere,
turned into `compare.System`s with the metrics their family defines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from harness.commands import compare as C
from harness.config import redact_uri
from harness.errors import ConfigError, DataError

PREDICTIONS = "predictions/test.json"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def get_run(client: Any, run_id: str, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise DataError(
            f"MLflow run '{run_id}' not found in {redact_uri(uri)}",
            "check the run id (harness prints it at the end of a run) and MLFLOW_TRACKING_URI",
        ) from None


def predictions_table(client: Any, run: Any) -> pd.DataFrame:
    """The run's per-example predictions, as it logged them."""
    import tempfile

    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS, tmp)
        except (MlflowException, OSError):
            task = run.data.tags.get("task", "<task>")
            raise DataError(
                f"MLflow run '{run_id}' has no per-example predictions ({PREDICTIONS}; status {run.info.status})",
                f"compare finished evaluation runs; to get predictions for a logged model: harness eval {task} "
                f"--model runs:/{run_id}",
            ) from None
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    return pd.DataFrame(table["data"], columns=table["columns"])


def seed_children(client: Any, run: Any) -> list[Any]:
    """The finished seed runs under a seeds parent run, by seed."""
    exp = run.info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    done = [c for c in children if c.info.status == "FINISHED" and c.data.tags.get("mode") != "seeds"]
    if not done:
        raise DataError(f"seeds run '{run.info.run_id}' has no finished seed run", "run the same command again")
    return sorted(done, key=lambda c: int(c.data.tags.get("seed", "0")))


def from_runs(
    run_ids: list[str], uri: str, names: Optional[list[str]]
) -> tuple[list[C.System], list[C.Metric], Optional[list[str]]]:
    from harness.families.registry import get_task

    client = _client(uri)
    runs = [get_run(client, r, uri) for r in run_ids]
    tasks = {r.data.tags.get("task") for r in runs}
    if len(tasks) != 1 or None in tasks:
        listed = ", ".join(f"{r.info.run_id[:8]}: {r.data.tags.get('task', '?')}" for r in runs)
        raise DataError(f"the runs are of different tasks ({listed})", "compare runs of one task")
    task = get_task(tasks.pop())
    systems, metrics, references = [], None, None
    for run in runs:
        parts = seed_children(client, run) if run.data.tags.get("mode") == "seeds" else [run]
        tables = [predictions_table(client, p) for p in parts]
        built = [family_arrays(task, t, p, names) for t, p in zip(tables, parts)]
        metrics = metrics or built[0][1]
        references = references or built[0][4]
        name = run.info.run_name or run.info.run_id[:8]
        systems.append(
            C.System(
                name=name if name not in {s.name for s in systems} else f"{name} ({run.info.run_id[:8]})",
                arrays=[b[0] for b in built],
                keys=built[0][2],
                outputs=built[0][3],
                run_id=run.info.run_id,
                task=task.name,
                family=task.family,
                digest=parts[0].data.params.get("split.test.digest"),
                signatures={
                    k.split(".")[1]: v
                    for k, v in parts[0].data.tags.items()
                    if k.startswith("metric.") and k.endswith(".signature")
                },
                texts=[b[5] for b in built] if task.family == "translation" else None,
                test_data=_user_file(parts[0].data.tags),
            )
        )
        _same_seed_examples(systems[-1], built)
    return systems, metrics or [], references


def _user_file(tags: dict[str, str]) -> Optional[str]:
    """`your file x.jsonl (sha256 ...)` for a run that scored a user's file in place of the test split."""
    path = tags.get("data.test_file")
    return f"your file {Path(path).name} (sha256 {tags.get('data.test_file.sha256', '?')[:12]})" if path else None


def _same_seed_examples(system: C.System, built: list) -> None:
    for b in built[1:]:
        if not np.array_equal(b[2], built[0][2]):
            raise DataError(f"the seed runs of {system.name} scored different examples", "rerun them on one split")


def family_arrays(task: Any, table: pd.DataFrame, run: Any, names: Optional[list[str]]) -> tuple:
    """(arrays, metrics, example keys, outputs, references, hypotheses) for one run's predictions table."""
    want = list(names or task.metrics or [])
    table = table.sort_values("row").reset_index(drop=True) if "row" in table else table
    keys = np.asarray(table["id"] if task.family == "extractive_qa" else table["row"])
    fam = task.family
    if fam == "classification":
        arrays, metrics = C.classification_metrics(table, list(task.labels or []), want)
        return arrays, metrics, keys, list(table["prediction"]), None, None
    if fam == "extractive_qa":
        v2 = str(task.options.get("version", "1.1")) == "2.0"
        has = table["gold_answers"].fillna("").astype(str).str.strip().ne("").to_numpy()
        arrays, metrics = C.squad_metrics(table["exact"].to_numpy(), table["f1"].to_numpy(), has, v2)
        return arrays, _only(metrics, want), keys, list(table["prediction"].fillna("")), None, None
    if fam in ("summarization", "translation"):
        hyps = [str(h) for h in table["hypothesis"]]
        refs = [str(r) for r in table["reference"]]
        if fam == "summarization":
            sig = run.data.tags.get("metric.rouge.signature", "")
            split = "newline" if "lsum-split:newline" in sig else "auto"
            # ROUGE-1.5.5's numbers are recomputed by the fast port (the same numbers as Perl's, which signed runs
            # made before it); rouge-score's by rouge-score
            engine = "pyrouge" if "engine:ROUGE-1.5.5" in sig else "rouge-score"
            arrays, metrics = C.rouge_metrics(hyps, refs, split, engine)
        else:
            arrays, metrics = C.sacre_metrics(hyps, refs, want or ["bleu", "chrf"])
        return arrays, _only(metrics, want), keys, hyps, refs, hyps
    if fam in ("causal_lm", "masked_lm"):
        arrays, metrics = C.perplexity_metrics(table["nll"].to_numpy(), table["tokens"].to_numpy())
        return arrays, _only(metrics, want), keys, [f"{p:.4g}" for p in table["perplexity"]], None, None
    raise ConfigError(f"harness compare does not know family '{fam}'", "compare runs of a known family")


def _only(metrics: list[C.Metric], names: list[str]) -> list[C.Metric]:
    chosen = [m for m in metrics if not names or m.name in names]
    return chosen or metrics


# ---- files made anywhere ---------------------------------------------------------------------------------------------


def from_files(
    paths: list[Path],
    *,
    references: Optional[Path],
    gold: Optional[Path],
    names: Optional[list[str]],
    field: str = "text",
    split: str = "auto",
    engine: str = "rouge-score",
) -> tuple[list[C.System], list[C.Metric], Optional[list[str]]]:
    if (references is None) == (gold is None):
        raise ConfigError(
            "compare files against --references (generation) or --gold (SQuAD), one of the two",
            "e.g. harness compare --predictions a.txt b.txt --references refs.txt",
        )
    if gold is not None:
        return _squad_files(paths, gold, names)
    from harness.commands.score import read_texts
    from harness.data.sources import file_sha256

    refs = read_texts(references, field)
    gold_words = f"the references {references.resolve()} (sha256 {file_sha256(references)})"
    want = list(names or ["bleu", "chrf"])
    unknown = [n for n in want if n not in ("bleu", "chrf", "rouge")]
    if unknown:
        raise ConfigError(f"unknown metric '{unknown[0]}' for text outputs", "use bleu, chrf and/or rouge")
    systems, metrics = [], []
    for path in paths:
        hyps = read_texts(path, field)
        if len(hyps) != len(refs):
            raise DataError(
                f"{path} has {len(hyps)} outputs but {references} has {len(refs)} references",
                "give one output per reference, in the same order",
            )
        arrays: dict = {}
        metrics = []
        if "rouge" in want:
            a, m = C.rouge_metrics(hyps, refs, split, engine)
            arrays.update(a)
            metrics += m
        if {"bleu", "chrf"} & set(want):
            a, m = C.sacre_metrics(hyps, refs, want)
            arrays.update(a)
            metrics += m
        systems.append(
            C.System(
                path.name,
                [arrays],
                np.arange(len(refs)),
                hyps,
                texts=[hyps],
                test_data=gold_words,
                file=(str(path.resolve()), file_sha256(path)),
            )
        )
    return systems, metrics, refs


def _squad_files(
    paths: list[Path], gold: Path, names: Optional[list[str]]
) -> tuple[list[C.System], list[C.Metric], None]:
    from harness.commands.score import load_mapping
    from harness.data.sources import file_sha256
    from harness.data.squad import load_json, parse_squad
    from harness.metrics import squad

    sq = parse_squad(load_json(gold, "SQuAD JSON file"), str(gold))
    golds = [squad.Gold(q, list(a["text"])) for q, a in zip(sq.rows["id"], sq.rows["answers"])]
    has = np.array([bool(g.answers) for g in golds])
    systems, metrics = [], []
    for path in paths:
        preds = load_mapping(path, "predictions", (str,), "an answer string")
        result = squad.score_v2(golds, preds) if sq.is_v2 else squad.score_v1(golds, preds)
        arrays, metrics = C.squad_metrics(np.asarray(result.exact), np.asarray(result.f1), has, sq.is_v2)
        metrics = _only(metrics, list(names or []))
        systems.append(
            C.System(
                path.name,
                [arrays],
                np.array([g.qid for g in golds]),
                [preds.get(g.qid, "") for g in golds],
                test_data=f"the gold file {gold.resolve()} (sha256 {file_sha256(gold)})",
                file=(str(path.resolve()), file_sha256(path)),
            )
        )
    return systems, metrics, None
