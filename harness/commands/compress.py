"""`harness compress <run> --method M` (`make compress RUN=... METHOD=...`): what a smaller, faster model costs.

The source run's logged model is evaluated again on the source's test examples (its data and eval settings), with
the compressed variant (built by `harness.compress`) standing in for the model in the test loop, as a new MLflow
run nested under the source (`mlflow.parentRunId`, tags `harness.compress.*`). The run holds the usual test metrics
with intervals and per-example predictions, and beside them: size on disk, batch-1 latency p50/p95 and batch-32
throughput of the variant and of the source model measured in the same process on this CPU (threads stated,
warm-up excluded), their ratios, a paired comparison with the source on the same examples, and a table and plot of
every variant of the source so far (`compression/`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
from mlflow.tracking import MlflowClient

from harness.compress import METHODS, TRAINED
from harness.compress.distill import DistillSpec, DistillStudent
from harness.compress.engines import ONNX_TOLERANCE, Variant, make_variant, plain_model, save_dense
from harness.compress.measure import Inputs, speed
from harness.data.resident import batch_to
from harness.errors import ConfigError, RunFailed
from harness.metrics.paired import p_text

__all__ = ["METHODS", "DistillSpec", "compress", "source_threads"]

FAMILIES = ("classification",)


class SwapModel(L.Callback):
    """At the start of the test loop, the module's model is replaced by the compressed variant; at its end the
    numbers that need the open run (ONNX agreement, size, speed) are logged to it."""

    def __init__(self, method: str, folder: Path, threads: int, sparsity: float, say: Any = None):
        self.method, self.folder, self.threads, self.sparsity = method, folder, threads, sparsity
        self.say = say or (lambda text: None)
        self.variant: Optional[Variant] = None
        self.source: Any = None
        self.inputs: Optional[Inputs] = None

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.method in TRAINED:  # the trained student is the variant (DistillStudent set it)
            return
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(module.hparams["model_path"])
        loader = trainer.test_dataloaders
        # a split held on the device yields index batches: gathered, they have the fields the model reads
        first = batch_to(next(iter(loader[0] if isinstance(loader, list) else loader)), "cpu")
        names = [k for k in module.inputs if k in first]
        self.source = plain_model(module.model).eval()
        self.variant = make_variant(
            self.method, module.model, tokenizer, self.folder, self.threads, self.sparsity, names
        )
        module.model = self.variant.model
        self.inputs = Inputs(module.inputs)

    def on_test_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, *args: Any) -> None:
        self.inputs.add(batch)

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        variant = self.variant
        metrics: dict[str, float] = {}
        diff = getattr(variant.model, "max_abs_diff", None)
        if diff is not None:
            metrics["logits_max_abs_diff_vs_torch"] = diff
        if self.method == "onnx" and diff > ONNX_TOLERANCE:
            raise RunFailed(
                f"the ONNX graph's logits differ from PyTorch's by up to {diff:.2e} on the test split (tolerance "
                f"{ONNX_TOLERANCE:g})",
                "report it with the model's architecture; evaluate the PyTorch model meanwhile",
            )
        if hasattr(variant.model, "reference"):  # timing measures the engine alone, not the agreement check
            variant.model.reference = None
        with tempfile.TemporaryDirectory() as tmp:
            source_bytes = sum(f.stat().st_size for f in save_dense(self.source, Path(tmp)))
        self.say(
            f"timing {self.method} and the source model on the test inputs (batch 1 and batch 32, {self.threads} "
            "thread(s)); this takes a few minutes on a CPU"
        )
        mine, theirs = speed(variant.model, self.inputs, self.threads), speed(self.source, self.inputs, self.threads)
        metrics.update(
            {
                "size_mb": variant.size_bytes / 2**20,
                "source_size_mb": source_bytes / 2**20,
                "size_ratio": source_bytes / max(variant.size_bytes, 1),
                **mine.metrics(),
                **theirs.metrics("source_"),
                "speedup_b1_p50": theirs.p50_ms / mine.p50_ms,
                "speedup_b32": mine.throughput / theirs.throughput,
            }
        )
        run_id = os.environ.get("HARNESS_RUN_ID")
        if run_id and trainer.is_global_zero:
            client = MlflowClient()
            for k, v in metrics.items():
                client.log_metric(run_id, k, v)
            for k, v in {**variant.notes, "threads": str(self.threads)}.items():
                client.set_tag(run_id, f"harness.compress.{k}", v)
        self.metrics = metrics


_TRAINING = ("optim.", "trainer.max_epochs", "trainer.max_steps", "trainer.accumulate_grad_batches", "seed")


def _source_overrides(run: Any, more: tuple[str, ...] = ()) -> list[str]:
    """The source run's data and evaluation settings (the same test examples, cut the same way), and `more`."""
    keep = ("data.", "eval.", *more)
    return [f"{k}={v}" for k, v in sorted(run.data.params.items()) if k.startswith(keep)]


def _half_depth(client: Any, run_id: str) -> Optional[int]:
    """Half the layers of the run's logged model (distillation's default student depth), from its config."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "model/artifacts/weights/config.json", tmp)
            layers = json.loads(Path(path).read_text()).get("num_hidden_layers")
        except Exception:  # no logged model (refused later, with its own message) or no such field
            return None
    return max(int(layers) // 2, 1) if layers else None


def _variant_tags(method: str, sparsity: float, distill: DistillSpec, given: dict[str, Any]) -> dict[str, str]:
    """What tells variants of one method apart (their key in the variants table)."""
    if method == "prune":
        return {"sparsity": f"{sparsity:g}"}
    epochs = given.get("trainer.max_epochs")
    trained = f"-{epochs}ep" if epochs is not None else ""
    if method == "distill":
        return {"student_spec": distill.label() + trained}
    if method == "prune-structured":
        depth = f"-L{distill.layers}" if distill.layers is not None else ""
        return {"sparsity": f"{sparsity:g}", "student_spec": f"ffn{sparsity:g}{depth}{trained}"}
    return {}


@dataclass
class Compressed:
    result: Any  # the runner's RunResult
    cfg: Any
    task: Any
    measured: dict[str, float]


def compress(
    source: str,
    method: str,
    overrides: list[str],
    sparsity: float = 0.5,
    threads: Optional[int] = None,
    distill: Optional[DistillSpec] = None,
    console: Any = None,
) -> Compressed:
    """Evaluate one compressed variant of `source`: the run, its config and task, and the numbers measured."""
    from harness.commands.systems import get_run
    from harness.config import default_tracking_uri, parse_override, resolve_run_config
    from harness.families.registry import get_task
    from harness.run.runner import run
    from harness.tracking.store import check_store

    if method not in METHODS:
        raise ConfigError(f"unknown compression method '{method}'", f"use one of {', '.join(METHODS)}")
    if method in ("prune", "prune-structured") and not 0 < sparsity < 1:
        raise ConfigError(f"--sparsity {sparsity:g} is not between 0 and 1", "e.g. --sparsity 0.5 (half the weights)")
    distill = distill or DistillSpec()
    distill.check()
    given = dict(parse_override(o) for o in overrides)
    uri = given.get("tracking.tracking_uri") or default_tracking_uri()
    check_store(uri)
    src = get_run(MlflowClient(uri), source, uri)
    task = get_task(src.data.tags.get("task") or src.data.params.get("task", ""))
    if task.family not in FAMILIES:
        raise ConfigError(
            f"compression covers {', '.join(FAMILIES)} tasks so far; run {source[:8]} is a {task.family} task",
            "compress a classification run (e.g. make eval TASK=imdb ARGS=log_model=true)",
        )
    threads = threads or source_threads(src.data.params) or torch_threads()
    if method == "distill" and distill.layers is None and distill.student is None:
        distill.layers = _half_depth(MlflowClient(uri), source)  # the default, named (not "LNone")
    variant_tags = _variant_tags(method, sparsity, distill, given)
    name = "-".join([src.info.run_name or source[:8], method, *variant_tags.values()])
    if method in TRAINED:  # the student trains like the source did, wherever the user trains
        fixed = ["train=true", f"model.name=runs:/{source}", f"trainer.num_threads={threads}"]
        cfg = resolve_run_config(
            task, [*_source_overrides(src, _TRAINING), *fixed, *overrides, f"tracking.run_name={name}"]
        )
    else:
        fixed = [
            "train=false",
            f"model.name=runs:/{source}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
            f"trainer.num_threads={threads}",
        ]
        cfg = resolve_run_config(task, [*_source_overrides(src), *overrides, *fixed, f"tracking.run_name={name}"])
    if cfg.log_model and method == "torch-int8":
        raise ConfigError(
            "log_model=true: a torch-int8 model (torch.ao quantized modules) cannot be saved as a servable model",
            "log and serve --method onnx-int8 instead, or drop log_model",
        )
    cfg.tracking.tags = {
        **cfg.tracking.tags,
        "mlflow.parentRunId": source,
        "harness.compress.method": method,
        "harness.compress.source": source,
        **{f"harness.compress.{k}": v for k, v in variant_tags.items()},
    }
    with tempfile.TemporaryDirectory(prefix="harness-compress-") as tmp:
        say = (lambda text: console.print(text, highlight=False)) if console is not None else None
        swap = SwapModel(method, Path(tmp), threads, sparsity, say)
        callbacks: list[Any] = [swap]
        if method in TRAINED:
            prune = sparsity if method == "prune-structured" else None
            callbacks.insert(0, DistillStudent(distill, Path(tmp), swap, prune=prune))
        result = run(cfg, task, extra_callbacks=callbacks, console=console)
    measured = dict(getattr(swap, "metrics", {}))
    if result.run_id:
        measured.update(_paired(uri, source, result.run_id, task.main_metric))
        _variants_table(uri, source, result.run_id)
    return Compressed(result, cfg, task, measured)


def source_threads(params: dict[str, str]) -> Optional[int]:
    """The CPU threads the source run was given (`trainer.num_threads`; logged as "null" when it used the
    default), else None."""
    value = params.get("trainer.num_threads", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _paired(uri: str, source: str, run_id: str, main: str) -> dict[str, float]:
    """The paired comparison with the source on the same examples, logged to the compressed run."""
    from harness.commands import compare as C
    from harness.commands.systems import from_runs

    systems, metrics, refs = from_runs([source, run_id], uri, None)
    C.check_same_examples(systems)
    C.align(systems)
    result = C.compare(systems, metrics, references=refs)
    client = MlflowClient(uri)
    out = {}
    for m in metrics:
        r = result.results[systems[1].name][m.name]
        out[f"paired_delta_{m.name}"] = float(r["delta"])
        out[f"paired_p_{m.name}"] = float(r["p_value"])
    for k, v in out.items():
        client.log_metric(run_id, k, v)
    r = result.results[systems[1].name].get(main)
    if r is not None:
        client.set_tag(
            run_id,
            "harness.compress.paired",
            f"{main} {r['delta']:+.4f} vs source, {r['test']}, {p_text(r['p_value'])}",
        )
    return out


COLUMNS = ("method", "main", "ci", "delta", "p", "size_mb", "p50_ms", "p95_ms", "throughput", "speedup_b1", "size_x")


def _variants_table(uri: str, source: str, run_id: str) -> list[dict[str, Any]]:
    """Every compressed variant of `source` so far, with the source first, as JSON + Markdown + a plot."""
    from harness.families.registry import get_task

    client = MlflowClient(uri)
    src = client.get_run(source)
    main = get_task(src.data.tags["task"]).main_metric
    runs = client.search_runs(
        [src.info.experiment_id],
        filter_string=f"tags.`harness.compress.source` = '{source}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    latest = {_variant_name(r.data.tags): r for r in runs}
    first = runs[-1].data.metrics if runs else {}
    rows = [
        {
            "method": "source (PyTorch fp32)",
            "run_id": source,
            "main": src.data.metrics.get(f"test_{main}"),
            "ci": [src.data.metrics.get(f"test_{main}_ci_low"), src.data.metrics.get(f"test_{main}_ci_high")],
            "size_mb": first.get("source_size_mb"),
            "p50_ms": first.get("source_latency_b1_p50_ms"),
            "p95_ms": first.get("source_latency_b1_p95_ms"),
            "throughput": first.get("source_throughput_b32"),
        }
    ]
    for key, r in latest.items():
        m = r.data.metrics
        rows.append(
            {
                "method": key,
                "run_id": r.info.run_id,
                "main": m.get(f"test_{main}"),
                "ci": [m.get(f"test_{main}_ci_low"), m.get(f"test_{main}_ci_high")],
                "delta": m.get(f"paired_delta_{main}"),
                "p": m.get(f"paired_p_{main}"),
                "size_mb": m.get("size_mb"),
                "p50_ms": m.get("latency_b1_p50_ms"),
                "p95_ms": m.get("latency_b1_p95_ms"),
                "throughput": m.get("throughput_b32"),
                "speedup_b1": m.get("speedup_b1_p50"),
                "size_x": m.get("size_ratio"),
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "variants.json").write_text(json.dumps({"metric": main, "rows": rows}, indent=1))
        (folder / "variants.md").write_text(markdown(rows, main))
        _plot(rows, main, folder / "variants.png")
        client.log_artifacts(run_id, str(folder), "compression")
    return rows


def _variant_name(tags: dict[str, str]) -> str:
    extra = [tags[f"harness.compress.{k}"] for k in ("sparsity", "student_spec") if f"harness.compress.{k}" in tags]
    return " ".join([tags["harness.compress.method"], *extra])


def _f(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]], main: str) -> str:
    head = (
        f"| variant | {main} [95% CI] | Δ vs source (p) | size MB | ×smaller | p50 ms (b1) | p95 ms | ×faster (b1) "
        "| ex/s (b32) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ci = r.get("ci") or [None, None]
        delta = "" if r.get("delta") is None else f"{r['delta']:+.4f} ({p_text(r['p'])})"
        lines.append(
            f"| {r['method']} | {_f(r['main'], '.4f')} [{_f(ci[0], '.4f')}, {_f(ci[1], '.4f')}] | {delta} | "
            f"{_f(r.get('size_mb'), '.1f')} | {_f(r.get('size_x'), '.2f')} | {_f(r.get('p50_ms'), '.1f')} | "
            f"{_f(r.get('p95_ms'), '.1f')} | {_f(r.get('speedup_b1'), '.2f')} | {_f(r.get('throughput'), '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], main: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        if r.get("p50_ms") is None or r.get("main") is None:
            continue
        ax.scatter(r["p50_ms"], r["main"], s=20 + 4 * (r.get("size_mb") or 0), alpha=0.6)
        ax.annotate(r["method"], (r["p50_ms"], r["main"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ci = r.get("ci") or [None, None]
        if None not in ci:
            ax.vlines(r["p50_ms"], ci[0], ci[1], alpha=0.4)
    ax.set_xlabel("batch-1 latency p50 (ms, this CPU)")
    ax.set_ylabel(f"test {main} (95% CI)")
    ax.set_title("compressed variants (marker area ~ size on disk)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
