"""Compressed variants of a trained classifier, each a drop-in for the module's `model` during the test loop.

- `onnx`: `torch.onnx.export` (the current, dynamo-based exporter) and ONNX Runtime on the CPU;
- `onnx-int8`: the same graph with ONNX Runtime's dynamic int8 quantization of the weights (`quantize_dynamic`);
- `torch-int8`: PyTorch's dynamic int8 quantization of every `nn.Linear` and weight-only int8 embeddings
  (`torch.ao.quantization.quantize_dynamic`, deprecated in torch 2.13 but the one CPU path that is there without
  extra packages; the run says so);
- `prune`: global L1 unstructured pruning of the backbone's `nn.Linear` weights to a sparsity (the head is kept);
- `distill`: a shallower student trained on Hinton's loss (harness/compress/distill.py).

Every variant reports its size on disk, as the file(s) a user would ship.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from harness.compress import METHODS
from harness.errors import ConfigError

ONNX_TOLERANCE = 1e-4  # max |logit difference| allowed between the fp32 ONNX graph and PyTorch on the test split


@dataclass
class Variant:
    method: str
    model: torch.nn.Module  # what the test loop calls instead of the module's model
    files: list[Path]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def plain_model(model: Any) -> torch.nn.Module:
    """A transformers model without adapters: LoRA merged (on a copy); prompt tuning cannot be merged."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        import peft

        if not isinstance(model.peft_config["default"], peft.LoraConfig):
            raise ConfigError(
                "a prompt-tuning adapter cannot be compressed (its virtual tokens are not weights of the model)",
                "compress a run trained with model.mode=full, frozen or lora",
            )
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_dense(model: torch.nn.Module, folder: Path) -> list[Path]:
    model.save_pretrained(folder, safe_serialization=True)
    return sorted(folder.glob("*.safetensors"))


# ---- ONNX ------------------------------------------------------------------------------------------------------------


def row_by_row(call: Callable[..., Any], batch: dict[str, Any], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits of each row alone, cut to its own length (no padding, no neighbours). For dynamically quantized models,
    whose activation scales are computed over the whole input tensor: batched, a text's answer would depend on the
    other texts in the request and on their padding; alone it never does."""
    mask = batch["attention_mask"] if mask is None else mask
    out = []
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        out.append(call(**{k: v[i : i + 1, :n] if v.dim() == 2 else v[i : i + 1] for k, v in batch.items()}))
    return torch.cat(out) if out else torch.zeros((0, 0))


class RowByRow(torch.nn.Module):
    """A classifier answered one text at a time (see `row_by_row`), behind the same call signature."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)

    def forward(self, **batch: Any) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=row_by_row(lambda **b: self.model(**b).logits, batch))


def dynamically_quantized(path: Path) -> bool:
    """Whether an ONNX graph quantizes its activations at run time (onnxruntime's quantize_dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger") for n in graph.node)


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime session behind the call signature of a transformers classifier. With `reference`, every
    batch also runs through PyTorch and the largest logit difference is kept (`max_abs_diff`). A dynamically
    quantized graph answers one text at a time (`row_by_row`), so no text's answer depends on its neighbours."""

    def __init__(self, path: Path, threads: int, reference: Optional[torch.nn.Module] = None, config: Any = None):
        super().__init__()
        import onnxruntime as ort

        self.path, self.config = Path(path), config if config is not None else getattr(reference, "config", None)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.reference = reference
        self.max_abs_diff = 0.0
        self.per_row = dynamically_quantized(self.path)

    def _run(self, **batch: Any) -> torch.Tensor:
        feed = {k: batch[k].cpu().numpy().astype(np.int64) for k in self.names}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def forward(self, **batch: Any) -> SequenceClassifierOutput:
        if "token_type_ids" in self.names and "token_type_ids" not in batch:  # single texts: one segment
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        mask = batch["attention_mask"]
        batch = {k: batch[k] for k in self.names}
        logits = row_by_row(self._run, batch, mask) if self.per_row else self._run(**batch)
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference(**{k: batch[k] for k in self.names}).logits.float()
            self.max_abs_diff = max(self.max_abs_diff, float((ref - logits).abs().max()))
        return SequenceClassifierOutput(logits=logits)

    def save_pretrained(self, folder: Any, **_: Any) -> None:
        """The graph (model.onnx, and model.onnx.data when the exporter put weights beside it) and the model's config
        (labels), as a folder harness/serving.py serves with ONNX Runtime."""
        import shutil

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for f in _files(self.path.parent):
            shutil.copy2(f, folder / f.name)
        if self.config is not None:
            self.config.save_pretrained(folder)


def export_onnx(model: torch.nn.Module, tokenizer: Any, path: Path, names: list[str]) -> list[str]:
    """The model as an ONNX graph with dynamic batch and sequence length, reading the inputs `names` (those the
    test batches have); returns them."""
    import logging
    import warnings

    sample = tokenizer(["an example", "another, longer example text"], padding=True, return_tensors="pt")
    inputs = {k: sample[k] for k in names}
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=8192)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
        warnings.simplefilter("ignore")
        import contextlib

        with contextlib.redirect_stdout(devnull):
            torch.onnx.export(
                model.eval(),
                args=(),
                kwargs=inputs,
                f=str(path),
                dynamo=True,
                dynamic_shapes={k: {0: batch, 1: seq} for k in inputs},
                input_names=list(inputs),
                output_names=["logits"],
                optimize=True,
                verbose=False,
            )
    return list(inputs)


def _quantize_onnx(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime advises pre-processing through the root logger
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


# ---- the methods -----------------------------------------------------------------------------------------------------


def make_variant(
    method: str, model: Any, tokenizer: Any, folder: Path, threads: int, sparsity: float, names: list[str]
) -> Variant:
    """`names`: the model inputs the test batches hold (e.g. no token_type_ids for single texts)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = plain_model(model).eval()
    if method in ("onnx", "onnx-int8"):
        fp32 = folder / "fp32" / "model.onnx"  # the exporter may put large weights beside it (model.onnx.data)
        fp32.parent.mkdir()
        export_onnx(base, tokenizer, fp32, names)
        if method == "onnx":
            return Variant(
                method, OnnxClassifier(fp32, threads, reference=base), _files(fp32.parent), {"engine": _ort()}
            )
        int8 = folder / "int8" / "model.onnx"
        int8.parent.mkdir()
        _quantize_onnx(fp32, int8)
        notes = {
            "engine": _ort(),
            "quantization": "onnxruntime quantize_dynamic, QInt8 weights; dynamic activation scales, so one text "
            "at a time (a text's answer never depends on the others in a batch)",
        }
        return Variant(method, OnnxClassifier(int8, threads, reference=base), _files(int8.parent), notes)
    if method == "torch-int8":
        quantized = _torch_int8(base)
        path = folder / "model.int8.pt"
        torch.save(quantized.state_dict(), path)
        notes = {"engine": f"torch {torch.__version__}", "quantization": _TORCH_INT8 + "; one text at a time"}
        return Variant(method, RowByRow(quantized), [path], notes)
    if method == "prune":
        pruned, kept = _prune(copy.deepcopy(base), sparsity)
        files = save_dense(pruned, folder)
        notes = {"pruning": f"global L1 unstructured, backbone nn.Linear weights, sparsity {sparsity}"}
        notes["nonzero_weights"] = str(kept)
        return Variant(method, pruned, files, notes)
    raise ConfigError(f"unknown compression method '{method}'", f"use one of {', '.join(METHODS)}")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _ort() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


_TORCH_INT8 = (
    "torch.ao.quantization.quantize_dynamic (deprecated in torch 2.13): qint8 nn.Linear (dynamic activations), "
    "quint8 word embeddings (weight-only, per-row scales)"
)


def _torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    quantize: Optional[Callable[..., Any]] = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize = getattr(quantize, "quantize_dynamic", None)
    if quantize is None:
        raise ConfigError(
            f"this torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic",
            "use --method onnx-int8 (ONNX Runtime's int8), which needs no torch quantization",
        )
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    # the word embeddings are most of a small encoder's size; the position and segment tables are tiny (and BERT
    # reads its default segment ids through a non-contiguous buffer, which the quantized lookup refuses)
    words = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is words), None)
    spec: dict[Any, Any] = {torch.nn.Linear: default_dynamic_qconfig}
    if name:
        spec[name] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize(copy.deepcopy(model).float(), spec, dtype=torch.qint8)


def _prune(model: torch.nn.Module, sparsity: float) -> tuple[torch.nn.Module, int]:
    from torch.nn.utils import prune

    if not 0 < sparsity < 1:
        raise ConfigError(f"--sparsity {sparsity} is not between 0 and 1", "e.g. --sparsity 0.5 (half the weights)")
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, model)
    params = [(m, "weight") for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    for m, name in params:
        prune.remove(m, name)
    kept = sum(int((m.weight != 0).sum()) for m, _ in params)
    return model, kept
