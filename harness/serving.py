"""A logged model is an MLflow model: `mlflow.pyfunc.load_model("runs:/<id>/model")` (or `models:/<name>/<version>`)
predicts, and `mlflow models serve` (`make serve`) answers over REST.

Layout of the `model/` artifact: `MLmodel` (python_function flavor, this module's `HarnessModel`), and the
save_pretrained folder under `artifacts/weights/` (weights or adapter, tokenizer, `harness.json` with the task,
labels and tokenization settings). The harness itself reads `runs:/<id>` from the same folder (`weights_folder`).

Classification: input a DataFrame with a `text` column (and `text_pair` for pair tasks); output `label`, `score`
(its probability) and `prob_<label>` for every label; texts are cut exactly as in the run's evaluation.
Extractive QA: input `question` and `context`; output `answer` (empty: no answer, SQuAD 2.0 models), `best_span`,
`span_score` and `score_diff` (no-answer score minus best span score), from the run's windows and span search.
A compressed ONNX variant (`harness compress --method onnx|onnx-int8 ... log_model=true`) is served by ONNX Runtime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc

WEIGHTS = "weights"  # the artifact name (folder artifacts/weights inside the MLflow model)
BATCH = 32
ONNX_FILE = "model.onnx"
SERVED_FAMILIES = ("classification", "extractive_qa", "summarization", "translation")


class BadRequest(Exception):
    pass


# MLflow advises, when this class is defined, type hints on `predict` (with them it would check inputs its own way;
# ours answer malformed requests with their own 400 messages). The advice is for us, not for our users' consoles:
# it is recorded and dropped (MLflow sets its own "once" filter around it, so an "ignore" filter would not hold).
with warnings.catch_warnings(record=True):

    class HarnessModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context: Any) -> None:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            folder = Path(context.artifacts[WEIGHTS])
            meta = json.loads((folder / "harness.json").read_text())
            if meta.get("family") not in SERVED_FAMILIES:
                raise ValueError(f"serving covers {', '.join(SERVED_FAMILIES)} models so far, not {meta.get('family')}")
            predictors = {"extractive_qa": Answerer, "summarization": Generator, "translation": Generator}
            self.predictor = predictors.get(meta["family"], Classifier)(folder, meta)

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow reads type hints here)
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            try:
                return self.predictor(_frame(model_input, self.predictor.columns))
            except BadRequest as e:  # the scoring server answers 400 with this message
                raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def _frame(model_input: Any, columns: tuple[str, ...]) -> Any:
    import pandas as pd

    df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadRequest(
            f"the input has no '{missing[0]}' column (it has: {', '.join(map(str, df.columns)) or 'none'}); send "
            '{"dataframe_records": [{"' + '": "...", "'.join(columns) + '": "..."}]}'
        )
    for c in columns:
        bad = [i for i, v in enumerate(df[c]) if not isinstance(v, str)]
        if bad:
            raise BadRequest(f"'{c}' of record {bad[0]} is not a string ({df[c].iloc[bad[0]]!r})")
    return df


class Classifier:
    """Texts -> label probabilities, tokenized and cut as the run's evaluation did."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        import torch
        from transformers import AutoTokenizer

        from harness.data.base import special_token_frame
        from harness.models.classification import SequenceClassifier

        self.labels = list(meta["labels"])
        self.max_length = int(meta.get("max_length", 128))
        self.truncation = meta.get("truncation", "head")
        self.head_tokens = meta.get("head_tokens")
        self.columns: tuple[str, ...] = ("text", "text_pair") if meta.get("pair") else ("text",)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.prefix, self.suffix = special_token_frame(self.tokenizer)
        self.torch = torch
        if (folder / ONNX_FILE).is_file():  # a compressed variant (harness compress --method onnx|onnx-int8)
            from harness.compress.engines import OnnxClassifier

            self.model = OnnxClassifier(folder / ONNX_FILE, threads=torch.get_num_threads())
            self.engine = "onnxruntime"
            return
        module = SequenceClassifier(labels=self.labels, optim={}, model_path=str(folder), model_source="mlflow-model")
        self.model = module.model.eval()
        self.engine = "torch"

    def encode(self, texts: list[str], pairs: Optional[list[str]]) -> list[dict[str, list[int]]]:
        from harness.data.base import split_tokens

        tok = self.tokenizer
        if pairs is not None:
            enc = tok(texts, pairs, truncation=True, max_length=self.max_length)
            types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
            return [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], types)]
        if self.truncation == "head":
            return [{"input_ids": i} for i in tok(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        raw = tok(texts, add_special_tokens=False)["input_ids"]
        budget = self.max_length - len(self.prefix) - len(self.suffix)
        cut = [self.prefix + split_tokens(x, budget, self.truncation, self.head_tokens) + self.suffix for x in raw]
        return [{"input_ids": i} for i in cut]

    def __call__(self, df: Any) -> Any:
        import pandas as pd

        torch = self.torch
        rows = self.encode(list(df["text"]), list(df["text_pair"]) if "text_pair" in self.columns else None)
        probs = []
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(rows), BATCH):
                group = rows[start : start + BATCH]
                width = max(len(r["input_ids"]) for r in group)
                batch = {
                    "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in group]),
                    "attention_mask": torch.tensor(
                        [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in group]
                    ),
                }
                if "token_type_ids" in group[0]:
                    batch["token_type_ids"] = torch.tensor(
                        [r["token_type_ids"] + [0] * (width - len(r["token_type_ids"])) for r in group]
                    )
                probs.append(self.model(**batch).logits.float().softmax(-1))
        p = torch.cat(probs).numpy() if probs else []
        out = pd.DataFrame(
            {"label": [self.labels[i] for i in p.argmax(-1)] if len(p) else [], "score": p.max(-1) if len(p) else []}
        )
        for j, name in enumerate(self.labels):
            out[f"prob_{name}"] = p[:, j] if len(p) else []
        return out


def save(weights: Path, dst: Path, meta: dict[str, Any]) -> None:
    """`weights` (a save_pretrained folder with harness.json) as an MLflow model at `dst`."""
    import warnings

    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    columns = ["text", "text_pair"] if meta.get("pair") else ["text"]
    if meta.get("family") == "extractive_qa":
        columns = list(Answerer.columns)
    if meta.get("family") in ("summarization", "translation"):
        columns = list(Generator.columns)
    inputs = Schema([ColSpec("string", c) for c in columns])
    outputs = None
    if meta.get("family") in ("summarization", "translation"):
        outputs = Schema([ColSpec("string", "text"), ColSpec("long", "gen_tokens"), ColSpec("boolean", "hit_max")])
    if meta.get("family") == "extractive_qa":
        outputs = Schema(
            [ColSpec("string", "answer"), ColSpec("string", "best_span")]
            + [ColSpec("double", c) for c in ("span_score", "score_diff")]
        )
    if meta.get("family") == "classification":
        outputs = Schema(
            [ColSpec("string", "label"), ColSpec("double", "score")]
            + [ColSpec("double", f"prob_{n}") for n in meta["labels"]]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            path=str(dst),
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # code, not a pickle
            artifacts={WEIGHTS: str(weights)},
            signature=ModelSignature(inputs=inputs, outputs=outputs),
            pip_requirements=_requirements(onnx=(weights / ONNX_FILE).is_file()),
        )


def _requirements(onnx: bool = False) -> list[str]:
    """What loading needs, pinned to this environment (harness itself is installed beside it, as when serving with
    --env-manager local)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    names = ["mlflow", "torch", "transformers", "tokenizers", "safetensors", "peft", "lightning", "pandas"]
    for name in names + (["onnxruntime"] if onnx else []):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


class Answerer:
    """Questions about contexts -> answers, with the run's windows (max_length, doc_stride), span search (n_best,
    max_answer_length) and, for SQuAD 2.0 models, its no-answer threshold: an empty answer means "no answer"."""

    columns = ("question", "context")

    def __init__(self, folder: Path, meta: dict[str, Any]):
        import torch
        from transformers import AutoTokenizer

        from harness.models.qa import QuestionAnswerer

        self.meta = meta
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.module = QuestionAnswerer(
            optim={},
            version_2=bool(meta.get("version_2")),
            n_best=int(meta.get("n_best", 20)),
            max_answer_length=int(meta.get("max_answer_length", 30)),
            null_threshold=float(meta.get("null_threshold", 0.0)),
            model_path=str(folder),
            model_source="mlflow-model",
        ).eval()
        self.engine = "torch"
        self.torch = torch

    def __call__(self, df: Any) -> Any:
        from types import SimpleNamespace

        import numpy as np
        import pandas as pd

        from harness.data.base import PadCollator
        from harness.data.qa import postprocess, windows

        torch, tok, meta = self.torch, self.tokenizer, self.meta
        questions, contexts = list(df["question"]), list(df["context"])
        if not questions:
            return pd.DataFrame({"answer": [], "best_span": [], "span_score": [], "score_diff": []})
        found = windows(tok, questions, contexts, int(meta.get("max_length", 384)), int(meta.get("doc_stride", 128)))
        pad = PadCollator(tok.pad_token_id or 0, 8, {"offset_start": -1, "offset_end": -1})
        parts = []
        with torch.inference_mode():
            for start in range(0, len(found), BATCH):
                rows = []
                for j, w in enumerate(found[start : start + BATCH]):
                    row = {
                        "input_ids": np.asarray(w.input_ids),
                        "offset_start": np.asarray(w.offset_start),
                        "offset_end": np.asarray(w.offset_end),
                        "_row": w.example,
                        "_feature": start + j,
                    }
                    if w.token_type_ids is not None:
                        row["token_type_ids"] = np.asarray(w.token_type_ids)
                    rows.append(row)
                batch = pad(rows)
                parts.append(self.module.candidates(batch, self.module(batch)))
        outputs = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
        n = len(questions)
        split = SimpleNamespace(
            name="request", dataset={"_row": list(range(n)), "context": contexts, "id": list(range(n))}
        )
        frame = postprocess(outputs, split, self.module.version_2, self.module.null_threshold).frame
        return pd.DataFrame(
            {
                "answer": frame["prediction"],
                "best_span": frame["best_span"],
                "span_score": frame["span_score"],
                "score_diff": frame["score_diff"],
            }
        )


class Generator:
    """Sources -> generated text (summaries, translations), encoded and generated with the run's settings: the
    prompt and chat template (decoder-only), source prefix and lengths, beams and penalties; greedy by default."""

    columns = ("source",)

    def __init__(self, folder: Path, meta: dict[str, Any]):
        import torch
        from transformers import AutoTokenizer

        from harness.config import GenerationConfig
        from harness.data.generation import has_chat_template
        from harness.models.generation import TextGenerator

        self.tokenizer = tok = AutoTokenizer.from_pretrained(str(folder))
        self.settings = GenerationConfig(**meta.get("generation", {}))
        self.kind = meta["kind"]
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token
        self.chat = self.kind == "causal" and self.settings.chat_template == "auto" and has_chat_template(tok)
        self.module = TextGenerator(
            optim={},
            kind=self.kind,
            generation=self.settings.model_dump(mode="json"),
            pad_token_id=meta["pad_token_id"],
            eos_token_id=meta.get("eos_token_id"),
            decoder_start_token_id=meta.get("decoder_start_token_id"),
            model_path=str(folder),
            model_source="mlflow-model",
        ).eval()
        self.engine = "torch"
        self.torch = torch

    def __call__(self, df: Any) -> Any:
        import numpy as np
        import pandas as pd

        from harness.data.generation import SequenceCollator, source_ids

        tok, torch = self.tokenizer, self.torch
        ids = source_ids(tok, self.settings, self.kind, self.chat, [str(s) for s in df["source"]])
        collate = SequenceCollator(self.module.pad_token_id, 8, "left" if self.kind == "causal" else "right")
        texts, lengths, hit = [], [], []
        size = self.settings.batch_size or BATCH
        for start in range(0, len(ids), size):
            batch = collate([{"input_ids": np.asarray(x)} for x in ids[start : start + size]])
            with torch.inference_mode():
                out = self.module.generate_tokens(batch["input_ids"], batch["attention_mask"])
            for row in out["tokens"].tolist():
                texts.append(tok.decode([t for t in row if t >= 0], skip_special_tokens=True).strip())
            lengths += out["length"].tolist()
            hit += out["hit_max"].tolist()
        return pd.DataFrame({"text": texts, "gen_tokens": lengths, "hit_max": hit})
