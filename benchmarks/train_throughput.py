"""Training throughput: the harness's Lightning path vs transformers' Trainer, same model, data and batch size,
one process.

    make bench-train          (or: python benchmarks/train_throughput.py [--models bert-base small] [--samples N])

For each model (`bert-base`: the bert-base-uncased shape with random weights — throughput does not depend on the
weights; `small`: the default MiniLM), both sides train sequence classification on the same tokenized IMDB
training reviews (truncated to `--max-length`, 512 by default) with effective batch size 32 for the same number of
samples:

- harness: the `full` profile's training path (`harness run` minus MLflow): bf16-mixed on GPUs, length-bucketed
  shuffled batches padded to a multiple of 64, fused AdamW, loader workers with pinned memory, no per-step host
  syncs;
- Trainer: `transformers.Trainer` with its defaults plus bf16 (on GPUs), the same learning rate and schedule.

Measured after warm-up steps on each side: samples/s, real (non-pad) tokens/s, padding share, MFU
(6 * parameters * real tokens / time / peak bf16 FLOP/s, the peak measured in this run with a large matmul) and
peak GPU memory; then the ratio harness/Trainer. Results also go to MLflow (experiment `bench-train`).
On a CPU (`--device cpu`) the same code runs as a smoke test with small numbers (MFU against a float32 matmul).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def peak_flops(device: str) -> tuple[float, str]:
    """Achieved FLOP/s of a large matmul on this device (bf16 on GPUs, float32 on CPUs): the MFU denominator."""
    import torch

    if device == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 1024, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t), f"{n}x{n} {str(dtype).replace('torch.', '')} matmul"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def make_model(kind: str, out: Path, model_path: Optional[str]) -> Path:
    """A model folder for both sides: bert-base shape (random, seeded) or the default small model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from harness.models.loading import packaged_path

    small = model_path or str(packaged_path("sentence-transformers/all-MiniLM-L6-v2"))
    tok = AutoTokenizer.from_pretrained(small)
    if kind == "small":
        return Path(small)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=2)  # bert-base-uncased shape: 12 x 768, 110M parameters
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Meter:
    """Samples and real tokens after `warmup` optimizer steps; time between the first and last measured step."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.t0: Optional[float] = None
        self.samples = 0
        self.tokens = 0
        self.slots = 0

    def start(self) -> None:
        _sync(self.device)
        self.t0 = time.perf_counter()

    def add(self, mask: Any) -> None:
        """One measured batch; the token count stays a (device) tensor until the end: no host sync per step."""
        self.samples += mask.shape[0]
        self.tokens = self.tokens + mask.sum()
        self.slots += mask.numel()

    def result(self) -> dict[str, float]:
        _sync(self.device)
        dt = time.perf_counter() - self.t0
        tokens = float(self.tokens)
        return {
            "seconds": dt,
            "samples_per_sec": self.samples / dt,
            "tokens_per_sec": tokens / dt,
            "padding_share": 1 - tokens / max(self.slots, 1),
        }


def counting(collate: Any, meter: Meter, steps: dict[str, int]) -> Any:
    """A collator that counts what the measured steps consume (batches after warm-up)."""

    def wrapped(rows: Any) -> Any:
        batch = collate(rows)
        steps["made"] += 1
        if steps["made"] > meter.warmup:  # Trainer's loader runs in this process (no workers by default)
            meter.add(batch["attention_mask"])
        return batch

    return wrapped


def run_harness(model_dir: Path, args: argparse.Namespace, device: str) -> dict[str, float]:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from transformers import AutoTokenizer

    from harness.config import resolve_run_config
    from harness.data.sources import load_task_data
    from harness.families import get_family
    from harness.models.loading import resolve_model
    from harness.registry import get_task
    from harness.runner import RunState
    from harness.runtime import configure_runtime, resolve_precision
    from harness.training import build_trainer

    task = get_task("imdb")
    profile = "full" if device == "cuda" else "quick"
    steps_total = args.warmup + args.steps
    overrides = [
        f"profile={profile}",
        f"model.name={model_dir}",
        f"data.max_length={args.max_length}",
        f"data.batch_size={args.batch_size}",
        f"data.train_size={steps_total * args.batch_size}",
        "data.validation_size=100",
        f"trainer.max_steps={steps_total}",
        "trainer.max_epochs=100",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "trainer.devices=1",
        "trainer.log_every_n_steps=50",
        "trainer.checkpoint_every_n_steps=100000",
        f"data.num_workers={args.workers if device == 'cuda' else 0}",
    ]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if device != "cuda":
        overrides.append("trainer.precision=32-true")
    cfg = resolve_run_config(task, overrides)
    configure_runtime(cfg)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg.tracking.output_dir = tempfile.mkdtemp(prefix="harness-bench-train-")
    family = get_family("classification")
    data = load_task_data(task, cfg, ("train",))
    model = resolve_model(str(model_dir))
    dm = family.build_datamodule(cfg, task, data, AutoTokenizer.from_pretrained(str(model_dir)))
    dm.setup()
    L.seed_everything(cfg.seed, verbose=False)
    module = family.build_module(cfg, task, model)
    meter = Meter(args.warmup, device)

    class Clock(Callback):  # counts the batches as the step sees them (loader workers are other processes)
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == args.warmup and meter.t0 is None:
                meter.start()
            if meter.t0 is not None:
                meter.add(batch["attention_mask"])

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg, None, RunState(cfg), [Clock()], quiet=True)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    res = meter.result()
    res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    res["parameters"] = float(sum(p.numel() for p in module.model.parameters()))
    res["precision"] = cfg.trainer.precision
    return res


def run_trainer(model_dir: Path, args: argparse.Namespace, device: str) -> dict[str, float]:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from harness.config import resolve_run_config
    from harness.data.sources import load_task_data
    from harness.registry import get_task

    task = get_task("imdb")
    steps_total = args.warmup + args.steps
    overrides = ["profile=quick", f"data.train_size={steps_total * args.batch_size}", "data.validation_size=100"]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = resolve_run_config(task, overrides)
    data = load_task_data(task, cfg, ("train",))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ds = data["train"].dataset.map(
        lambda b: tok(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text", "_row"],
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    meter = Meter(args.warmup, device)
    made = {"made": 0}
    collator = counting(DataCollatorWithPadding(tok), meter, made)

    class Clock(TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == args.warmup and meter.t0 is None:
                meter.start()

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-bench-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=steps_total,
        learning_rate=cfg.optim.lr,
        warmup_steps=int(cfg.optim.warmup_ratio * steps_total),
        weight_decay=cfg.optim.weight_decay,
        bf16=device == "cuda",
        use_cpu=device != "cuda",
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        seed=cfg.seed,
        disable_tqdm=True,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    Trainer(
        model=model,
        args=targs,
        train_dataset=ds.rename_column("label", "labels"),
        data_collator=collator,
        callbacks=[Clock()],
    ).train()
    res = meter.result()
    res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    res["parameters"] = float(sum(p.numel() for p in model.parameters()))
    res["precision"] = "bf16" if device == "cuda" else "fp32"
    return res


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    from harness.config import default_tracking_uri

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["bert-base", "small"], choices=["bert-base", "small"])
    ap.add_argument("--model-path", help="the small model's folder (default: the MiniLM pip package)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side (default: 60 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default: 10 GPU, 1 CPU)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--workers", type=int, default=4, help="loader workers on the harness side (GPU)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR"))
    ap.add_argument("--tracking-uri", default=default_tracking_uri())
    args = ap.parse_args(argv)
    import torch

    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    args.steps = args.steps or (60 if device == "cuda" else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if device == "cuda" else 1)
    peak, how = peak_flops(device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name} · peak {peak / 1e12:.1f} TFLOP/s ({how}) · batch {args.batch_size} · max length "
        f"{args.max_length} · {args.steps} measured steps after {args.warmup} warm-up",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            model_dir = make_model(kind, Path(tmp) / kind, args.model_path)
            for side, fn in (("trainer", run_trainer), ("harness", run_harness)):
                r = fn(model_dir, args, device)
                r["mfu"] = 6 * r["parameters"] * r["tokens_per_sec"] / peak
                results[f"{kind}/{side}"] = r
            results[f"{kind}/ratio"] = (
                results[f"{kind}/harness"]["samples_per_sec"] / results[f"{kind}/trainer"]["samples_per_sec"]
            )
    print(f"{'model / side':22} {'samples/s':>10} {'tokens/s':>10} {'padding':>8} {'MFU':>7} {'peak GiB':>9}")
    for kind in args.models:
        for side in ("trainer", "harness"):
            r = results[f"{kind}/{side}"]
            print(
                f"{kind + ' / ' + side:22} {r['samples_per_sec']:10.1f} {r['tokens_per_sec']:10.0f} "
                f"{100 * r['padding_share']:7.1f}% {100 * r['mfu']:6.2f}% {r['peak_memory_gib']:9.2f}"
            )
        print(f"{kind + ' ratio harness/Trainer':34} {results[f'{kind}/ratio']:.2f}x samples/s")
    _log(results, args, device, name, peak, how)
    return results


def _log(results: dict[str, Any], args: argparse.Namespace, device: str, name: str, peak: float, how: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("bench-train")
    with mlflow.start_run(run_name=f"bench-train-{device}"):
        mlflow.log_params(
            {
                "device": name,
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "steps": args.steps,
                "warmup": args.warmup,
                "models": ",".join(args.models),
                "peak_flops_method": how,
            }
        )
        mlflow.log_metric("peak_tflops", peak / 1e12)
        for key, r in results.items():
            if isinstance(r, float):
                mlflow.log_metric(f"{key.replace('/', '_')}_samples_per_sec", r)
                continue
            for k in ("samples_per_sec", "tokens_per_sec", "padding_share", "mfu", "peak_memory_gib"):
                if r[k] == r[k]:
                    mlflow.log_metric(f"{key.replace('/', '_')}_{k}", float(r[k]))


if __name__ == "__main__":
    main()
    sys.exit(0)
