"""Training throughput, the harness against transformers' Trainer: the same model, the same tokenized rows, the same
batch size, one process, measured the same way on both sides.

Used by `make bench-train` (benchmarks/train_throughput.py: rows tokenized from the task's files, results in
MLflow) and by the GPU check's `bench-train` phase (harness/commands/gpucheck.py: rows from the bundle, no MLflow or
datasets on the host).

- harness: the `full` profile's training path (`harness run` without tracking): bf16-mixed on GPUs, length-bucketed
  shuffled batches padded to a multiple of 64, fused AdamW, loader workers with pinned memory, no per-step host
  syncs, plus whatever `extra` overrides say (the GPU check passes the attention kernel and compile settings it
  measured to help);
- Trainer: `transformers.Trainer` with its defaults plus bf16 (on GPUs), the same learning rate and schedule,
  dynamic padding to the longest row of each batch.

Both count, on the batches that reach the model after `warmup` optimizer steps: samples/s, real (non-pad) tokens/s,
the padding share, MFU (useful training FLOP/s over the peak FLOP/s measured in the same process with a large
matmul; see `training_flops_per_token`), and peak GPU memory. The clock starts at the first measured step and
stops after the last one, with a device sync at both ends only.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

MODELS = ("bert-base", "small")


@dataclass
class BenchSpec:
    device: str  # cuda | cpu
    batch_size: int = 32
    steps: int = 60  # measured optimizer steps per side
    warmup: int = 10  # unmeasured steps first
    workers: int = 4  # loader workers on the harness side (GPU)
    extra: list[str] = field(default_factory=list)  # harness overrides (kernel / compile choices)

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    @property
    def rows_needed(self) -> int:
        return self.total * self.batch_size


CPU_MEMORY_LIMIT = 8 * 2**30  # what a CPU run of the benchmark may take (the project's machines have 24 GiB)


def training_bytes(layers: int, hidden: int, heads: int, intermediate: int, vocab: int, batch: int, length: int) -> int:
    """A float32 estimate of what training a BERT-shaped classifier needs at once: the weights, their gradients and
    Adam's two moments (16 bytes a parameter), and each layer's saved activations (about ten hidden-wide tensors,
    two intermediate-wide ones, and the attention's scores and probabilities, which the CPU materializes).

    >>> round(training_bytes(12, 768, 12, 3072, 30522, 32, 512) / 2**30, 1)  # BERT-base at the GPU shape (OOM-killed
    36.0
    >>> round(training_bytes(12, 768, 12, 3072, 30522, 8, 128) / 2**30, 1)  # past 24 GB on a CPU); the CPU shape
    3.0
    """
    params = vocab * hidden + 512 * hidden + layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    per_layer = batch * length * (10 * hidden + 2 * intermediate) * 4 + 2 * batch * heads * length * length * 4
    # x1.8: what the CPU allocator holds besides; measured on the 2-core machine: bert-base at 8 x 512 peaked at
    # 9.8 GB in `make bench-train DEVICE=cpu`, and at 32 x 512 it passed 24 GB (OOM-killed)
    return 16 * params + int(1.8 * layers * per_layer)


def cpu_shape(config: Any, batch: int, length: int, limit: int = CPU_MEMORY_LIMIT) -> tuple[int, int]:
    """The batch size and length to train a model of `config`'s shape with on a CPU: the ones asked for, else halved
    (the batch first, down to 8, then the length, down to 128) until the estimate fits `limit`."""

    def need(b: int, n: int) -> int:
        c = config
        return training_bytes(
            c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.vocab_size, b, n
        )

    while need(batch, length) > limit and (batch > 8 or length > 128):
        if batch > 8:
            batch //= 2
        else:
            length //= 2
    return batch, length


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: str) -> None:
    if device == "cuda":  # queued GPU work finishes before the clock reads; a CPU has no queue
        torch.cuda.synchronize()


def peak_flops(device: str) -> tuple[float, str]:
    """Achieved FLOP/s of a large matmul on this device (bf16 on GPUs, float32 on CPUs): the MFU denominator."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device == "cuda" else (2048, torch.float32, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t), f"{n}x{n} {str(dtype).replace('torch.', '')} matmul"


def bert_base_shape(small_dir: Path, out: Path) -> Path:
    """A model folder with bert-base-uncased's shape (12 layers x 768, 110M parameters) and random, seeded weights
    (throughput does not depend on the weights), with the small model's tokenizer (the same 30,522-word vocab)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(small_dir))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=2)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Meter:
    """Samples and real tokens of the measured steps; the token count stays a device tensor until the end."""

    def __init__(self, device: str):
        self.device = device
        self.t0: Optional[float] = None
        self.seconds = 0.0
        self.samples, self.slots = 0, 0
        self.tokens: Any = 0

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def add(self, mask: torch.Tensor) -> None:
        if self.t0 is not None and not self.seconds:
            self.samples += mask.shape[0]
            self.tokens = self.tokens + mask.sum()
            self.slots += mask.numel()

    def stop(self) -> None:
        if self.t0 is not None and not self.seconds:
            sync(self.device)
            self.seconds = time.perf_counter() - self.t0

    def result(self) -> dict[str, float]:
        if not self.seconds:
            raise RuntimeError("the measured steps never ran (fewer rows than warm-up + measured steps?)")
        tokens = float(self.tokens)
        return {
            "seconds": self.seconds,
            "samples_per_sec": self.samples / self.seconds,
            "tokens_per_sec": tokens / self.seconds,
            "padding_share": 1 - tokens / max(self.slots, 1),
        }


def model_shape(model: Any) -> dict[str, float]:
    """What the FLOP count needs: parameters outside the embedding tables, layers and width."""
    total = sum(p.numel() for p in model.parameters())
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    cfg = model.config
    return {
        "parameters": float(total),
        "nonembedding_parameters": float(total - tables),
        "layers": float(cfg.num_hidden_layers),
        "hidden": float(cfg.hidden_size),
    }


def training_flops_per_token(r: dict[str, Any]) -> float:
    """Training FLOPs per real token: 6 x the non-embedding parameters (the matmuls, forward and backward) plus the
    attention scores and their weighted sum over the example's real length, 12 x layers x width x length (the
    usual MFU accounting; padding does no useful work and is not counted)."""
    mean_length = r["tokens_per_sec"] / r["samples_per_sec"]
    return 6 * r["nonembedding_parameters"] + 12 * r["layers"] * r["hidden"] * mean_length


def _peak_memory(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def harness_config(model_dir: Path, spec: BenchSpec) -> Any:
    from harness.config import resolve_run_config
    from harness.families.registry import get_task

    cuda = spec.device == "cuda"
    # a CPU measurement compares like with like (float32 on both sides, no loader workers); the GPU's settings on a
    # CPU are the GPU check's imdb phases (harness/commands/gpucheck.py) and tests/test_device_paths.py
    overrides = [
        f"profile={'full' if cuda else 'quick'}",
        f"model.name={model_dir}",
        f"data.batch_size={spec.batch_size}",
        f"trainer.max_steps={spec.total}",
        "trainer.max_epochs=1000",
        f"trainer.accelerator={'gpu' if cuda else 'cpu'}",
        "trainer.devices=1",
        "trainer.log_every_n_steps=50",
        "trainer.checkpoint_every_n_steps=1000000",
        f"data.num_workers={spec.workers if cuda else 0}",
        *([] if cuda else ["trainer.precision=32-true", "data.pin_memory=false"]),
        *spec.extra,
    ]
    return get_task("imdb"), resolve_run_config(get_task("imdb"), overrides)


def harness_side(model_dir: Path, rows: Any, spec: BenchSpec) -> dict[str, Any]:
    """The harness's training path on `rows` (a TokenizedDataset with `input_ids` and `label`)."""
    import lightning as L
    from transformers import AutoTokenizer

    from harness.data.base import Pretokenized
    from harness.data.classification import ClassificationDataModule
    from harness.models.classification import SequenceClassifier
    from harness.run.training import RunFolder, build_trainer
    from harness.runtime import configure_runtime, resolve_device_settings

    task, cfg = harness_config(model_dir, spec)
    configure_runtime(cfg)
    resolve_device_settings(cfg)
    dm = ClassificationDataModule(cfg, task, Pretokenized(), AutoTokenizer.from_pretrained(str(model_dir)))  # type: ignore[arg-type]
    dm.encoded = {"train": rows}
    L.seed_everything(cfg.seed, verbose=False)
    module = SequenceClassifier(
        labels=list(task.labels),
        optim=cfg.optim.model_dump(mode="json"),
        model_path=str(model_dir),
        attn_implementation=cfg.model.attn_implementation,
    )
    meter = Meter(spec.device)

    class Clock(L.Callback):  # the batches as the step sees them (loader workers are other processes)
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == spec.warmup and meter.t0 is None:
                meter.start()
            meter.add(batch["attention_mask"])

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            if trainer.global_step == spec.total:
                meter.stop()

    if spec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        trainer = build_trainer(cfg, None, RunFolder(Path(tmp)), [Clock()], quiet=True, checkpoints=False)
        started = time.perf_counter()
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
        fit_seconds = time.perf_counter() - started
    return {
        **meter.result(),
        "fit_seconds": fit_seconds,  # warm-up (and compiling) included
        "peak_memory_gib": _peak_memory(spec.device),
        **model_shape(module.model),
        "precision": cfg.trainer.precision,
    }


class Rows(torch.utils.data.Dataset):
    """The same tokenized rows, as the Trainer's data collator takes them."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        return {"input_ids": row["input_ids"].tolist(), "labels": int(row["label"])}


def trainer_side(model_dir: Path, rows: Any, spec: BenchSpec) -> dict[str, Any]:
    """transformers.Trainer on the same rows: its defaults, plus bf16 on GPUs and the harness's optimizer
    settings (learning rate, warm-up share, weight decay, seed)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from harness.runtime import set_sdpa_backend

    _, cfg = harness_config(model_dir, spec)
    if spec.device == "cuda":
        set_sdpa_backend("auto")  # PyTorch's own choice, whatever an earlier harness run in this process kept
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2, dtype=torch.float32)
    meter = Meter(spec.device)
    # what reaches the model, counted as it arrives (the Trainer's loader reads one batch ahead)
    model.register_forward_pre_hook(lambda m, args, kwargs: meter.add(kwargs["attention_mask"]), with_kwargs=True)

    class Clock(TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == spec.warmup and meter.t0 is None:
                meter.start()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == spec.total:
                meter.stop()

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=spec.batch_size,
            max_steps=spec.total,
            learning_rate=cfg.optim.lr,
            warmup_steps=int(cfg.optim.warmup_ratio * spec.total),
            weight_decay=cfg.optim.weight_decay,
            bf16=spec.device == "cuda",
            use_cpu=spec.device != "cuda",
            save_strategy="no",
            logging_steps=50,
            report_to=[],
            seed=cfg.seed,
            disable_tqdm=True,
        )
        if spec.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        collator = DataCollatorWithPadding(tok)
        Trainer(model=model, args=targs, train_dataset=Rows(rows), data_collator=collator, callbacks=[Clock()]).train()
    return {
        **meter.result(),
        "peak_memory_gib": _peak_memory(spec.device),
        **model_shape(model),
        "precision": "bf16-mixed" if spec.device == "cuda" else "32-true",
        "optimizer": str(targs.optim),
    }


def plain_step(net: Any, opt: Any, sched: Any, b: dict[str, Any], device: str, bf16: bool) -> None:
    """One step of a bare loop: forward, backward, clip at 1.0, step, schedule, zero the gradients."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["label"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0, foreach=True)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def plain_side(model_dir: Path, rows: Any, spec: BenchSpec) -> dict[str, Any]:
    """A plain PyTorch loop on the harness's own batches (its loader: length buckets padded to the profile's
    multiple) and settings (precision, fused AdamW, clipping at 1.0): forward, backward, clip, step, schedule, zero
    the gradients; no framework. What the harness's loop is held against."""
    from transformers import AutoTokenizer, get_scheduler

    from harness.data.base import Pretokenized
    from harness.data.classification import ClassificationDataModule
    from harness.data.resident import batch_to
    from harness.models.classification import SequenceClassifier
    from harness.runtime import configure_runtime, resolve_device_settings

    task, cfg = harness_config(model_dir, spec)
    configure_runtime(cfg)
    resolve_device_settings(cfg)
    dm = ClassificationDataModule(cfg, task, Pretokenized(), AutoTokenizer.from_pretrained(str(model_dir)))  # type: ignore[arg-type]
    dm.encoded = {"train": rows}
    torch.manual_seed(cfg.seed)
    net = SequenceClassifier(
        labels=list(task.labels), optim={}, model_path=str(model_dir), attn_implementation=cfg.model.attn_implementation
    ).model.to(spec.device)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, fused=bool(cfg.optim.fused))
    sched = get_scheduler("linear", opt, num_warmup_steps=spec.total // 10, num_training_steps=spec.total)
    bf16 = cfg.trainer.precision.startswith("bf16")
    meter = Meter(spec.device)
    if spec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step, b in enumerate(dm.train_dataloader()):
        if step == spec.total:
            break
        if step == spec.warmup:
            meter.start()
        b = batch_to(b, spec.device)  # the harness's batches, resident on the device or not
        meter.add(b["attention_mask"])
        plain_step(net, opt, sched, b, spec.device, bf16)
    meter.stop()
    return {
        **meter.result(),
        "fit_seconds": time.perf_counter() - started,
        "peak_memory_gib": _peak_memory(spec.device),
        **model_shape(net),
        "precision": cfg.trainer.precision,
    }


SIDES = {"trainer": "trainer_side", "harness": "harness_side", "plain": "plain_side"}


def compare(
    model_dir: Path,
    rows: Any,
    spec: BenchSpec,
    peak: float,
    say: Any = print,
    sides: tuple[str, ...] = ("trainer", "harness"),
) -> dict[str, Any]:
    """The sides on one model; results keyed by side, with MFU, the ratio of the harness's samples/s to the
    Trainer's (`ratio`) and, with the plain loop, to the plain loop's (`ratio_plain`)."""
    out: dict[str, Any] = {"batch_size": spec.batch_size}
    for side in sides:
        say(f"   {side}: {spec.warmup} warm-up + {spec.steps} measured steps of {spec.batch_size}")
        r = globals()[SIDES[side]](model_dir, rows, spec)
        r["mfu"] = training_flops_per_token(r) * r["tokens_per_sec"] / peak
        out[side] = r
    out["ratio"] = out["harness"]["samples_per_sec"] / out["trainer"]["samples_per_sec"]
    if "plain" in out:
        out["ratio_plain"] = out["harness"]["samples_per_sec"] / out["plain"]["samples_per_sec"]
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """The results of `compare` for each model, one line per side and one for the ratio."""
    lines = [f"{'model / side':22} {'samples/s':>10} {'tokens/s':>10} {'padding':>8} {'MFU':>7} {'peak GiB':>9}"]
    for kind, res in results.items():
        for side in ("trainer", "harness", "plain"):
            if side not in res:
                continue
            r = res[side]
            lines.append(
                f"{kind + ' / ' + side:22} {r['samples_per_sec']:10.1f} {r['tokens_per_sec']:10.0f} "
                f"{100 * r['padding_share']:7.1f}% {100 * r['mfu']:6.2f}% {r['peak_memory_gib']:9.2f}"
            )
        lines.append(f"{kind + ' ratio harness/Trainer':34} {res['ratio']:.2f}x samples/s")
        if "ratio_plain" in res:
            lines.append(f"{kind + ' ratio harness/plain loop':34} {res['ratio_plain']:.2f}x samples/s")
    return "\n".join(lines)


# ---- attention kernels and torch.compile: measured, kept only where they help ------------------------------------

SDPA_BACKENDS = ("efficient", "cudnn", "flash", "math")
CUDA_ONLY = ("efficient", "cudnn")  # flash and math also run on a CPU (the same switches choose there)
ATTENTION: dict[str, list[str]] = {
    "auto": [],
    **{b: [f"model.sdpa_backend={b}"] for b in SDPA_BACKENDS},
    "eager": ["model.attn_implementation=eager"],
}
VARIANTS = (*ATTENTION, "compile", "graphs")  # graphs: compile with CUDA graphs (reduce-overhead), GPU only
MARGIN = 0.03  # a choice is kept when it is at least this much faster than the default (beyond run-to-run noise)


def _attempt(model_dir: Path, rows: Any, spec: BenchSpec, extra: list[str]) -> dict[str, Any]:
    try:
        return harness_side(model_dir, rows, replace(spec, extra=[*spec.extra, *extra]))
    except Exception as e:  # a kernel that cannot run this model here (e.g. flash with a padding mask): recorded
        lines = [x for x in str(e).splitlines() if x.strip()]
        return {"error": f"{type(e).__name__}: {lines[0][:200] if lines else ''}"}


def _rate(r: dict[str, Any]) -> float:
    return float(r.get("samples_per_sec", 0.0))


def measure_kernels(
    model_dir: Path, rows: Any, spec: BenchSpec, variants: list[str], planned_samples: int, say: Any = print
) -> dict[str, Any]:
    """The harness's training steps with each attention kernel (SDPA with any kernel, or only one; eager
    attention), then torch.compile on top of the best: `kept` lists the overrides that helped. An attention choice
    is kept when it beats the default by MARGIN; compile when it does too and the time it saves over
    `planned_samples` training samples exceeds the extra time its warm-up took (compiling)."""
    results: dict[str, dict[str, Any]] = {}
    if spec.device == "cuda":  # CUDA context, cuBLAS and loader start-up paid once, outside every measurement
        say("   warming up the device")
        _attempt(model_dir, rows, replace(spec, warmup=1, steps=2), [])
    for v in ["auto", *[x for x in variants if x in ATTENTION and x != "auto"]]:
        if spec.device != "cuda" and v in CUDA_ONLY:
            results[v] = {"skipped": "a CUDA kernel (the CPU's attention has flash and math)"}
            continue
        say(f"   attention {v}")
        results[v] = _attempt(model_dir, rows, spec, ATTENTION[v])
    if "error" in results["auto"]:
        raise RuntimeError(f"the default training steps failed: {results['auto']['error']}")
    best = max((v for v in results if _rate(results[v]) > 0), key=lambda v: _rate(results[v]))
    helps = _rate(results[best]) > _rate(results["auto"]) * (1 + MARGIN)
    kept = list(ATTENTION[best]) if helps else []
    ref = results[best] if helps else results["auto"]
    compiled = {"compile": "trainer.compile=true", "graphs": "trainer.compile=reduce-overhead"}
    best_compile = None
    for name, setting in compiled.items():
        if name not in variants:
            continue
        if name == "graphs" and spec.device != "cuda":
            results[name] = {"skipped": "CUDA graphs need a GPU"}
            continue
        say(f"   torch.compile ({setting.split('=')[1]}){' with ' + ' '.join(kept) if kept else ''}")
        c = results[name] = _attempt(model_dir, rows, spec, [*kept, setting])
        if _rate(c) > 0:
            c["overhead_seconds"] = (c["fit_seconds"] - c["seconds"]) - (ref["fit_seconds"] - ref["seconds"])
            c["saved_seconds"] = planned_samples * (1 / _rate(ref) - 1 / _rate(c))
            pays = _rate(c) > _rate(ref) * (1 + MARGIN) and c["saved_seconds"] > c["overhead_seconds"]
            if pays and (best_compile is None or c["saved_seconds"] - c["overhead_seconds"] > best_compile[0]):
                best_compile = (c["saved_seconds"] - c["overhead_seconds"], setting)
    if best_compile is not None:
        kept.append(best_compile[1])
    for r in results.values():
        if _rate(r) > 0:
            r["speedup"] = _rate(r) / _rate(results["auto"])
    return {"variants": results, "kept": kept, "best_attention": best if helps else "auto"}


def kernels_line(k: dict[str, Any]) -> str:
    """One line per variant, then what was kept."""
    lines = []
    for v, r in k["variants"].items():
        if "skipped" in r or "error" in r:
            lines.append(f"  {v:10} {r.get('skipped') or 'failed: ' + r['error']}")
            continue
        extra = ""
        if "overhead_seconds" in r:
            extra = f" · compiling {r['overhead_seconds']:.0f} s vs {r['saved_seconds']:.0f} s saved on the full run"
        lines.append(f"  {v:10} {r['samples_per_sec']:9.1f} samples/s ({r['speedup']:.2f}x){extra}")
    lines.append(f"  kept: {' '.join(k['kept']) if k['kept'] else 'the defaults (nothing helped by 3% or more)'}")
    return "\n".join(lines)
