"""Where a training step's host time goes, measured without a GPU: for the harness's training path, transformers'
Trainer and a plain PyTorch loop on the same tiny model and the same rows,

- host time per optimizer step (the median over the timed steps: on a CPU with a tiny model nearly all of it is
  framework work, which on a GPU is the fixed cost a step pays before and between its kernels);
- aten operations per optimizer step (from torch.profiler: the operations the step dispatches from outside aten,
  views and other metadata-only operations left out), a device-independent proxy for the kernels a step launches;
- host-device syncs per step (every `aten::_local_scalar_dense`, nested or not: `.item()`, `float(t)`, `if t:` on a
  tensor, transformers' padding-mask check), each of which stalls a GPU's queue.

On a GPU (the GPU check's `steps` phase) the same three sides also report, per optimizer step, the CUDA kernels
and copies the device ran, the device time they took and its share of the step's wall time (how busy the GPU was:
a low share means the step waits on the host), and the CUDA runtime's synchronizing calls.

Used by `make bench-train DEVICE=cpu` (benchmarks/train_throughput.py) and the GPU check. Goals (issue: GPU speed):
the harness's operations per step <= the Trainer's; its host time per step <= 1.2x the plain loop's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

# aten operations that launch no kernel on a GPU: views, shape and metadata changes, allocation without a fill
NO_KERNEL = frozenset(
    {
        "aten::empty",
        "aten::empty_strided",
        "aten::empty_like",
        "aten::view",
        "aten::_unsafe_view",
        "aten::as_strided",
        "aten::reshape",
        "aten::_reshape_alias",
        "aten::t",
        "aten::transpose",
        "aten::permute",
        "aten::expand",
        "aten::expand_as",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::slice",
        "aten::select",
        "aten::detach",
        "aten::detach_",
        "aten::alias",
        "aten::resolve_conj",
        "aten::resolve_neg",
        "aten::lift_fresh",
        "aten::split",
        "aten::split_with_sizes",
        "aten::chunk",
        "aten::narrow",
        "aten::unbind",
        "aten::result_type",
        "aten::is_nonzero",
        "aten::contiguous",
        "aten::numpy_T",
        "aten::view_as",
        "aten::unflatten",
        "aten::flatten",
        "aten::set_",
        "aten::is_same_size",
        "aten::size",
        "aten::stride",
        "aten::dim",
        "aten::requires_grad_",
        "aten::_has_compatible_shallow_copy_type",
    }
)
SYNC = "aten::_local_scalar_dense"
# CUDA runtime calls that wait for the device (a GPU profile's host-side events)
CUDA_SYNCS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"})
GOALS = {"ops_vs_trainer": 1.0, "host_vs_plain": 1.2}


class StepWindow:
    """Ticks at the start of each optimizer step (0-based) and once after the last: steps `warmup`..`warmup+timed`
    are timed, the `profiled` steps after them run under torch.profiler."""

    def __init__(self, warmup: int, timed: int, profiled: int, device: str = "cpu"):
        self.warmup, self.timed, self.profiled = warmup, timed, profiled
        self.device = device
        self.ticks: list[float] = []
        self.prof: Any = None
        self.ops = self.syncs = 0
        self.kernels = self.copies = self.cuda_syncs = 0
        self.device_us = 0.0
        self.kinds: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.warmup + self.timed + self.profiled

    def tick(self, step: int) -> None:
        if self.warmup <= step <= self.warmup + self.timed and len(self.ticks) == step - self.warmup:
            self.ticks.append(time.perf_counter())
        if step == self.warmup + self.timed and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device == "cuda":  # kernel events need a CUDA device (the counting is tested on recorded events)
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
        if step == self.total and self.prof is not None:
            self.prof.__exit__(None, None, None)
            self._count(self.prof.events())
            self.prof = False

    def _count(self, events: Any) -> None:
        """Operations dispatched from outside aten (what the Python side of a step asks for: a fused optimizer step
        or a layer norm counts once, as on a GPU it is one kernel or a few, not the CPU implementation's inner
        calls). A sync is every `_local_scalar_dense`, the call that copies a device value to the host, wherever it
        sits: `.item()`, `float(t)` and `if t:` (transformers' `padding_mask.all()` in an `if`: `is_nonzero`) all end
        in it, nested or not; only a fused CPU optimizer's own reads of its step counts are left out (inside it, and
        on a GPU they stay on the device)."""
        for e in events:
            name = e.name
            if e.device_type == torch.autograd.DeviceType.CUDA:  # what the GPU ran: kernels, copies, fills
                if name.startswith(("Memcpy", "Memset")):
                    self.copies += 1
                else:
                    self.kernels += 1
                self.device_us += e.time_range.elapsed_us()
                continue
            if name in CUDA_SYNCS:
                self.cuda_syncs += 1
                continue
            if name == SYNC and not _inside_fused_optimizer(e):
                self.syncs += 1  # every read of a device value, however deep (`if t:` -> is_nonzero -> item -> here)
            if not name.startswith("aten::") or _inside_aten(e):
                continue
            if name in NO_KERNEL:
                continue
            self.ops += 1
            self.kinds[name] = self.kinds.get(name, 0) + 1

    def result(self) -> dict[str, Any]:
        if len(self.ticks) < 2 or self.prof is not False:
            raise RuntimeError("the profiled steps never ran (fewer rows than the window needs?)")
        steps = [b - a for a, b in zip(self.ticks, self.ticks[1:])]
        top = sorted(self.kinds.items(), key=lambda kv: -kv[1])[:12]
        out = {
            "host_ms_per_step": 1000 * statistics.median(steps),
            "aten_ops_per_step": self.ops / self.profiled,
            "syncs_per_step": self.syncs / self.profiled,
            "top_ops_per_step": {k: v / self.profiled for k, v in top},
        }
        if self.device == "cuda":
            device_ms = self.device_us / 1000 / self.profiled
            out.update(
                {
                    "kernels_per_step": self.kernels / self.profiled,
                    "copies_per_step": self.copies / self.profiled,
                    "device_ms_per_step": device_ms,
                    # the GPU's share of a step's wall time spent running something (the rest it waited on the host)
                    "device_busy_share": device_ms / out["host_ms_per_step"],
                    "cuda_syncs_per_step": self.cuda_syncs / self.profiled,
                }
            )
        return out


def _inside_fused_optimizer(e: Any) -> bool:
    parent = e.cpu_parent
    while parent is not None:
        if parent.name.startswith(("aten::_fused_adam", "aten::_fused_sgd")):
            return True
        parent = parent.cpu_parent
    return False


def _inside_aten(e: Any) -> bool:
    parent = e.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def tiny_bert(out: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer BERT classifier (hidden 32, random seeded weights) with the default model's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, **shape)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _config(model_dir: Path, batch_size: int, steps: int, extra: list[str], device: str = "cpu") -> tuple[Any, Any]:
    from harness.config import resolve_run_config
    from harness.families.registry import get_task
    from harness.runtime import resolve_device_settings

    task = get_task("imdb")
    # a CPU: float32 and no loader workers on every side; a GPU: the full profile's settings (bf16, its loader)
    settings = (
        ["profile=full", "trainer.accelerator=gpu"]
        if device == "cuda"
        else ["profile=quick", "trainer.accelerator=cpu", "trainer.precision=32-true", "data.num_workers=0"]
    )
    cfg = resolve_run_config(
        task,
        [
            *settings,
            f"model.name={model_dir}",
            f"data.batch_size={batch_size}",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=1000",
            "trainer.devices=1",
            *extra,
        ],
    )
    resolve_device_settings(cfg)
    return task, cfg


def _harness_parts(model_dir: Path, rows: Any, cfg: Any, task: Any) -> tuple[Any, Any]:
    import lightning as L
    from transformers import AutoTokenizer

    from harness.data.base import Pretokenized
    from harness.data.classification import ClassificationDataModule
    from harness.models.classification import SequenceClassifier

    dm = ClassificationDataModule(cfg, task, Pretokenized(), AutoTokenizer.from_pretrained(str(model_dir)))  # type: ignore[arg-type]
    dm.encoded = {"train": rows}
    L.seed_everything(cfg.seed, verbose=False)
    module = SequenceClassifier(
        labels=list(task.labels), optim=cfg.optim.model_dump(mode="json"), model_path=str(model_dir)
    )
    return dm, module


def harness_steps(
    model_dir: Path, rows: Any, window: StepWindow, batch_size: int, extra: list[str], device: str = "cpu"
) -> dict:
    """`Trainer.fit` as a run does it (the run's Trainer, callbacks and data module; no tracking store, no
    checkpoint files: their cost is not per step)."""
    import lightning as L

    from harness.run.training import RunFolder, build_trainer
    from harness.runtime import configure_runtime

    task, cfg = _config(model_dir, batch_size, window.total, extra, device)
    configure_runtime(cfg)
    dm, module = _harness_parts(model_dir, rows, cfg, task)

    class Tick(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            window.tick(trainer.global_step)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            window.tick(trainer.global_step)

    with tempfile.TemporaryDirectory(prefix="harness-steps-") as tmp:
        trainer = build_trainer(cfg, None, RunFolder(Path(tmp)), [Tick()], quiet=True, checkpoints=False)
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return {**window.result(), "optimizer": f"AdamW (fused={cfg.optim.fused})"}


def plain_steps(model_dir: Path, rows: Any, window: StepWindow, batch_size: int, device: str = "cpu") -> dict:
    """The floor: the same model, batches (the harness's loader) and optimizer, in a bare loop: forward, backward,
    clip, step, schedule, zero the gradients."""
    from transformers import get_scheduler

    from harness.commands.benchtrain import plain_step
    from harness.data.resident import batch_to

    task, cfg = _config(model_dir, batch_size, window.total, [], device)
    dm, module = _harness_parts(model_dir, rows, cfg, task)
    net = module.model.to(device)
    net.train()
    bf16 = cfg.trainer.precision.startswith("bf16")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, fused=bool(cfg.optim.fused))
    sched = get_scheduler("linear", opt, num_warmup_steps=window.total // 10, num_training_steps=window.total)
    step = 0
    while step < window.total:
        for b in dm.train_dataloader():
            if step == window.total:
                break
            window.tick(step)
            plain_step(net, opt, sched, batch_to(b, device), device, bf16=bf16)
            step += 1
    window.tick(step)
    return {**window.result(), "optimizer": f"AdamW (fused={cfg.optim.fused})"}


def trainer_steps(model_dir: Path, rows: Any, window: StepWindow, batch_size: int, device: str = "cpu") -> dict:
    """transformers.Trainer with its defaults (its optimizer, padding to each batch's longest row)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from harness.commands.benchtrain import Rows

    _, cfg = _config(model_dir, batch_size, window.total, [], device)
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2, dtype=torch.float32)

    class Tick(TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            window.tick(state.global_step)

        def on_train_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            window.tick(state.global_step)

    with tempfile.TemporaryDirectory(prefix="trainer-steps-") as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            max_steps=window.total,
            learning_rate=cfg.optim.lr,
            warmup_steps=window.total // 10,
            use_cpu=device != "cuda",
            bf16=device == "cuda",
            save_strategy="no",
            logging_steps=50,
            report_to=[],
            seed=cfg.seed,
            disable_tqdm=True,
        )
        collator = DataCollatorWithPadding(AutoTokenizer.from_pretrained(str(model_dir)))
        Trainer(model=model, args=targs, train_dataset=Rows(rows), data_collator=collator, callbacks=[Tick()]).train()
    return {**window.result(), "optimizer": str(targs.optim)}


SIDES: dict[str, Callable[..., dict]] = {"harness": harness_steps, "trainer": trainer_steps, "plain": plain_steps}


def profile(
    model_dir: Path,
    rows: Any,
    batch_size: int = 8,
    warmup: int = 5,
    timed: int = 30,
    profiled: int = 10,
    extra: Optional[list[str]] = None,
    say: Any = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """The three sides on the same model and rows, then the ratios the goals judge."""
    out: dict[str, Any] = {"device": device}
    for side, fn in SIDES.items():
        say(f"   {side}: {warmup} warm-up, {timed} timed and {profiled} profiled steps of {batch_size}")
        window = StepWindow(warmup, timed, profiled, device)
        own = [extra or []] if side == "harness" else []
        out[side] = fn(model_dir, rows, window, batch_size, *own, device=device)
    out["ops_vs_trainer"] = out["harness"]["aten_ops_per_step"] / out["trainer"]["aten_ops_per_step"]
    out["host_vs_plain"] = out["harness"]["host_ms_per_step"] / out["plain"]["host_ms_per_step"]
    out["goals"] = {
        "ops_vs_trainer": out["ops_vs_trainer"] <= GOALS["ops_vs_trainer"],
        "host_vs_plain": out["host_vs_plain"] <= GOALS["host_vs_plain"],
    }
    return out


def table(p: dict[str, Any]) -> str:
    gpu = "kernels_per_step" in p["harness"]
    # on a GPU a step's wall time: the host runs ahead until something waits for the device
    head = f"{'side':10} {'ms/step' if gpu else 'host ms/step':>13} {'aten ops/step':>14} {'syncs/step':>11}"
    if gpu:
        head += f" {'kernels/step':>13} {'copies/step':>12} {'GPU ms/step':>12} {'GPU busy':>9} {'cuda syncs':>11}"
    lines = [head + "  optimizer"]
    for side in SIDES:
        r = p[side]
        line = f"{side:10} {r['host_ms_per_step']:13.2f} {r['aten_ops_per_step']:14.1f} {r['syncs_per_step']:11.2f}"
        if gpu:
            line += (
                f" {r['kernels_per_step']:13.1f} {r['copies_per_step']:12.1f} {r['device_ms_per_step']:12.2f}"
                f" {100 * r['device_busy_share']:8.0f}% {r['cuda_syncs_per_step']:11.2f}"
            )
        lines.append(f"{line}  {r['optimizer']}")
    ok = p["goals"]
    clock = "wall" if gpu else "host"
    lines.append(
        f"harness ops/step = {p['ops_vs_trainer']:.2f}x the Trainer's (goal <= 1.0: "
        f"{'met' if ok['ops_vs_trainer'] else 'MISSED'}); {clock} time/step = {p['host_vs_plain']:.2f}x the plain "
        f"loop's (goal <= 1.2: {'met' if ok['host_vs_plain'] else 'MISSED'})"
    )
    return "\n".join(lines)
