"""Training throughput: the harness's Lightning path vs transformers' Trainer, same model, data and batch size,
one process.

    make bench-train    (or: python benchmarks/train_throughput.py [--models bert-base,small] [--steps N] [overrides])

For each model (`bert-base`: the bert-base-uncased shape with random weights — throughput does not depend on the
weights; `small`: the default MiniLM), both sides train sequence classification on the same IMDB training reviews,
tokenized once by the harness (truncated to `--max-length`, 512 by default), with batch size 32 for the same
number of steps. What each side runs and how it is measured: harness/commands/benchtrain.py (the GPU check's first phase
runs the same code on the bundle's rows). Results also go to MLflow (experiment `bench-train`). On a CPU
(`--device cpu`) the same code runs as a smoke test with small numbers (MFU against a float32 matmul), followed by
the step profile (harness/commands/stepprofile.py): host time, aten operations and syncs per optimizer step for
the harness,
the Trainer and a plain loop on a tiny BERT, the device-independent view of what a step costs besides its math.
`--json` prints every result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def training_rows(model_dir: Path, n: int, max_length: int, data_dir: Optional[str]) -> Any:
    """The first `n` IMDB training reviews, tokenized by the harness's classification data module."""
    from transformers import AutoTokenizer

    from harness.config import resolve_run_config
    from harness.data.classification import ClassificationDataModule
    from harness.data.sources import load_task_data
    from harness.families.registry import get_task

    task = get_task("imdb")
    overrides = ["profile=quick", f"data.train_size={n}", "data.validation_size=100", f"data.max_length={max_length}"]
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    cfg = resolve_run_config(task, overrides)
    data = load_task_data(task, cfg, ("train",))
    dm = ClassificationDataModule(cfg, task, data, AutoTokenizer.from_pretrained(str(model_dir)))
    return dm.encode_split(data.splits["train"])


def _models(text: str) -> list[str]:
    from harness.commands.benchtrain import MODELS

    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or any(x not in MODELS for x in names):
        raise argparse.ArgumentTypeError(f"{text!r}: use a comma-separated list of {', '.join(MODELS)}")
    return names


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    import torch

    from harness.commands import benchtrain
    from harness.config import default_tracking_uri
    from harness.models.loading import packaged_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models", type=_models, default=list(benchtrain.MODELS), help="comma-separated: bert-base,small (default)"
    )
    ap.add_argument("--model-path", help="the small model's folder (default: the MiniLM pip package)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side (default: 60 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default: 10 GPU, 1 CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (a CPU: what fits in 8 GB)")
    ap.add_argument("--max-length", type=int, default=None, help="default 512 (a CPU: what fits in 8 GB)")
    ap.add_argument("--workers", type=int, default=4, help="loader workers on the harness side (GPU)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR"))
    ap.add_argument("--tracking-uri", default=default_tracking_uri())
    ap.add_argument(
        "--step-profile",
        choices=["auto", "on", "off"],
        default="auto",
        help="host time and aten operations per optimizer step, harness vs Trainer vs a plain loop, on a tiny BERT "
        "(auto: on a CPU)",
    )
    ap.add_argument("--profile-batch-size", type=int, default=8)
    ap.add_argument("--profile-steps", type=int, default=30, help="timed steps per side (then 10 profiled)")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every result at the end")
    ap.add_argument("overrides", nargs="*", help="harness config overrides for its side (e.g. trainer.compile=true)")
    args = ap.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    _shapes(args, cuda)
    spec = benchtrain.BenchSpec(
        device=device,
        batch_size=args.batch_size,
        steps=args.steps or (60 if cuda else 3),
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
        workers=args.workers,
        extra=list(args.overrides),
    )
    peak, how = benchtrain.peak_flops(device)
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name} · peak {peak / 1e12:.1f} TFLOP/s ({how}) · batch {spec.batch_size} · max length "
        f"{args.max_length} · {spec.steps} measured steps after {spec.warmup} warm-up",
        flush=True,
    )
    small = Path(args.model_path or packaged_path("sentence-transformers/all-MiniLM-L6-v2"))
    rows = training_rows(small, spec.rows_needed, args.max_length, args.data_dir)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            model_dir = small if kind == "small" else benchtrain.bert_base_shape(small, Path(tmp) / kind)
            print(f"-- {kind}", flush=True)
            results[kind] = benchtrain.compare(model_dir, rows, spec, peak)
            if not cuda:  # the guard: a CPU run stays within what it may take
                rss = benchtrain.peak_rss()
                ok = rss <= benchtrain.CPU_MEMORY_LIMIT
                print(
                    f"   peak memory {rss / 2**30:.1f} GB (limit {benchtrain.CPU_MEMORY_LIMIT / 2**30:.0f} GB: "
                    f"{'kept' if ok else 'EXCEEDED'})",
                    flush=True,
                )
                results[kind]["peak_memory_gb"] = rss / 2**30
    print(benchtrain.table(results))
    flat = {f"{k}/{side}": v for k, res in results.items() for side, v in res.items()}
    steps = None
    if args.step_profile == "on" or (args.step_profile == "auto" and not cuda):
        steps = step_profile(small, args, spec)
        flat["step_profile"] = steps
    _log(flat, args, spec, name, peak, how)
    if args.json:
        print(json.dumps(flat, default=float))
    return flat


def _shapes(args: argparse.Namespace, cuda: bool) -> None:
    """32 x 512 on a GPU. On a CPU, the same unless it would not fit: BERT-base at 32 x 512 in float32 took more than
    24 GB (the OOM killer stopped it); the shapes are halved until the estimate fits 8 GB, and said."""
    if cuda:
        args.batch_size, args.max_length = args.batch_size or 32, args.max_length or 512
        return
    from transformers import BertConfig

    from harness.commands import benchtrain

    asked = (args.batch_size or 32, args.max_length or 512)
    widest = BertConfig() if "bert-base" in args.models else None  # the largest shape this run trains
    if widest is None or (args.batch_size and args.max_length):
        args.batch_size, args.max_length = asked
        return
    args.batch_size, args.max_length = benchtrain.cpu_shape(widest, *asked)
    if (args.batch_size, args.max_length) != asked:
        need = benchtrain.training_bytes(12, 768, 12, 3072, widest.vocab_size, *asked) / 2**30
        print(
            f"on a CPU: batch {args.batch_size} x {args.max_length} tokens (bert-base at {asked[0]} x {asked[1]} "
            f"needs about {need:.0f} GB, over the {benchtrain.CPU_MEMORY_LIMIT / 2**30:.0f} GB a CPU run may take; "
            "--batch-size and --max-length choose)",
            flush=True,
        )


def step_profile(small: Path, args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """harness/commands/stepprofile.py on a tiny BERT and IMDB rows cut to 64 tokens: per optimizer step, host time
    and aten operations (a device-independent proxy for kernel launches) and syncs, for the three sides."""
    from harness.commands import stepprofile

    b = args.profile_batch_size
    window = stepprofile.StepWindow(5, args.profile_steps, 10)
    print(f"-- step profile: tiny BERT (2 x 32), batch {b}, length <= 64 (harness / Trainer / plain loop)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = stepprofile.tiny_bert(Path(tmp) / "tiny", small)
        rows = training_rows(model, window.total * b, 64, args.data_dir)
        steps = stepprofile.profile(model, rows, b, 5, args.profile_steps, 10, extra=list(spec.extra))
    print(stepprofile.table(steps))
    return steps


def _log(results: dict[str, Any], args: argparse.Namespace, spec: Any, name: str, peak: float, how: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("bench-train")
    with mlflow.start_run(run_name=f"bench-train-{spec.device}"):
        mlflow.log_params(
            {
                "device": name,
                "batch_size": spec.batch_size,
                "max_length": args.max_length,
                "steps": spec.steps,
                "warmup": spec.warmup,
                "models": ",".join(args.models),
                "peak_flops_method": how,
                "harness_overrides": " ".join(spec.extra),
            }
        )
        mlflow.log_metric("peak_tflops", peak / 1e12)
        steps = results.get("step_profile")
        if steps:
            for side in ("harness", "trainer", "plain"):
                for k in ("host_ms_per_step", "aten_ops_per_step", "syncs_per_step"):
                    mlflow.log_metric(f"steps_{side}_{k}", steps[side][k])
            mlflow.log_metrics(
                {"steps_ops_vs_trainer": steps["ops_vs_trainer"], "steps_host_vs_plain": steps["host_vs_plain"]}
            )
        for key, r in results.items():
            if key == "step_profile" or key.endswith("/batch_size"):
                continue
            if isinstance(r, float):
                mlflow.log_metric(f"{key.replace('/', '_')}_samples_per_sec", r)
                continue
            for k in ("samples_per_sec", "tokens_per_sec", "padding_share", "mfu", "peak_memory_gib"):
                if r[k] == r[k]:
                    mlflow.log_metric(f"{key.replace('/', '_')}_{k}", float(r[k]))


if __name__ == "__main__":
    main()
    sys.exit(0)
