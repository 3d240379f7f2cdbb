"""Training callbacks: throughput metrics, plain progress lines for CI logs, and the divergence check."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from harness.errors import RunFailed


class StepMonitor(Callback):
    """Logs the learning rate, samples/s, real (non-pad) tokens/s and the padding share every `every` steps.

    Real tokens are counted on the host before the batch moves to the device (the module's `host_tokens`), so a
    step costs the monitor no device work and no sync.
    """

    def __init__(self, every: int):
        self.every = every
        self._tokens0 = 0
        self._reset(None)

    def _reset(self, pl_module: Any) -> None:
        self._t0 = time.perf_counter()
        self._samples = 0
        self._slots = 0
        self._batches = 0
        self._tokens0 = getattr(pl_module, "host_tokens", 0)
        self._device_tokens: Any = 0  # modules that do not count on the host (not harness's own)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        mask = batch["attention_mask"]
        self._samples += mask.shape[0]
        self._slots += mask.numel()
        if not hasattr(pl_module, "host_tokens"):
            self._device_tokens = self._device_tokens + mask.sum()
        self._batches += 1
        if trainer.global_step % self.every == 0 and self._batches >= self.every:
            elapsed = time.perf_counter() - self._t0
            counted = getattr(pl_module, "host_tokens", None)
            tokens = float(counted - self._tokens0 if counted is not None else self._device_tokens)
            metrics = {
                "train_samples_per_sec": self._samples / elapsed,
                "train_tokens_per_sec": tokens / elapsed,
                "train_padding_share": 1 - tokens / max(self._slots, 1),
            }
            if trainer.optimizers:
                metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            pl_module._last_throughput = metrics  # read by LineProgress
            self._reset(pl_module)


class LineProgress(Callback):
    """One line per logging interval instead of progress bars (used when CI is set or output is not a terminal)."""

    def __init__(self, every: int, stream: Any = None):
        self.every = every
        self.stream = stream or sys.stdout
        self._t0 = 0.0
        self._zero = True

    def _print(self, text: str) -> None:
        if self._zero:
            print(text, file=self.stream, flush=True)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._zero = trainer.is_global_zero

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._print(
            f"training: {trainer.num_training_batches} batches/epoch, {trainer.max_epochs} epoch(s), "
            f"{trainer.estimated_stepping_batches} optimizer steps"
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        if step % self.every and step != total:
            return
        if getattr(pl_module, "_line_step", None) == step:
            return
        pl_module._line_step = step
        loss = trainer.callback_metrics.get("train_loss")
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / max(step, 1) * (total - step)
        tp = getattr(pl_module, "_last_throughput", {}).get("train_samples_per_sec")
        parts = [f"step {step}/{total}", f"epoch {trainer.current_epoch + 1}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        if tp:
            parts.append(f"{tp:.1f} samples/s")
        parts.append(f"elapsed {elapsed:.0f}s eta {eta:.0f}s")
        self._print("  " + " | ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if vals:
            self._print("  validation: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(vals.items())))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(f"evaluating: {sum(trainer.num_test_batches)} batches")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        total = sum(trainer.num_test_batches)
        if (batch_idx + 1) % max(self.every, 1) == 0 or batch_idx + 1 == total:
            self._print(f"  eval batch {batch_idx + 1}/{total}")


class DivergenceCheck(Callback):
    """Stops training when the loss or the gradients stop being finite numbers: a diverged run is a failure, never
    a result, so the run fails (naming the step and the likely cause) before any test metric is computed.

    A step costs the check no device work: it keeps the step's loss and the gradient norm clipping computed (0-d
    tensors, as they are), and every `every` steps and at the end of training tests them all at once (one kernel and
    one read per check); under DDP the ranks agree on the first bad step. Without clipping it computes the norm
    itself, once per step.
    """

    def __init__(self, every: int, cfg: Any):
        self.every = every
        self.cfg = cfg
        self._values: list[torch.Tensor] = []  # losses and gradient norms since the last check
        self._steps: list[int] = []  # the optimizer step of each
        self._what: list[int] = []  # 0 loss, 1 gradients

    def _keep(self, value: torch.Tensor, step: int, what: int) -> None:
        self._values.append(value.detach().reshape(-1))
        self._steps.append(step)
        self._what.append(what)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.cfg.trainer.precision == "16-mixed":
            return  # fp16's loss scaler skips steps with inf gradients by design
        clips = getattr(pl_module, "clips_itself", None)
        if clips is not None and clips(trainer):
            return  # clipping computes the global norm next; it is kept after the step (no second pass)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self._keep(torch.stack(torch._foreach_norm(grads)), trainer.global_step + 1, 1)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._keep(loss, max(trainer.global_step, 1), 0)
        norm = getattr(pl_module, "grad_norm", None)
        if norm is not None and self.cfg.trainer.precision != "16-mixed":
            self._keep(norm, max(trainer.global_step, 1), 1)  # the step just taken
            pl_module.grad_norm = None
        if trainer.global_step % self.every == 0:
            self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if not self._values:
            return
        values = torch.cat(self._values)  # type promotion covers a bf16 loss beside a float32 norm
        bad = (~torch.isfinite(values)).cpu().tolist()  # the one read: a device sync once per check
        firsts = [(s, w) for b, s, w in zip(bad, self._steps, self._what) if b]
        self._values, self._steps, self._what = [], [], []
        local = 2 * firsts[0][0] + firsts[0][1] if firsts else -1
        if trainer.world_size > 1:  # every rank checks at the same steps; the one that saw a bad step tells them all
            local = int(trainer.strategy.reduce(torch.tensor(local, device=values.device), reduce_op="max"))
        if local < 0:
            return
        step, what = divmod(local, 2)
        name = "the loss" if what == 0 else "the gradients"
        raise RunFailed(f"training diverged: {name} became NaN or infinite at step {step}", _likely_cause(self.cfg))


def _likely_cause(cfg: Any) -> str:
    o, t = cfg.optim, cfg.trainer
    causes = []
    if o.lr > 1e-3:
        causes.append(f"the learning rate is far too high for fine-tuning (optim.lr={o.lr:g}; try 1e-5 to 1e-4)")
    if t.precision in ("16-mixed", "16-true"):
        causes.append(f"float16 overflows (trainer.precision={t.precision}; bf16-mixed has float32's range)")
    if not t.gradient_clip_val:
        causes.append("gradients are not clipped (set trainer.gradient_clip_val=1.0)")
    if not causes:
        causes.append("lower optim.lr, or look for extreme inputs in the training data")
    return "likely cause: " + "; or ".join(causes) + ". No test metrics were computed from the diverged model"


def quiet_mode() -> bool:
    import os

    return bool(os.environ.get("CI")) or not sys.stdout.isatty()


class CompileModel(Callback):
    """`trainer.compile=true` (or a mode): the model is compiled in place (`nn.Module.compile`) before fitting or
    testing, so its weights keep their names in checkpoints and exports. The first steps of each new batch shape pay
    for compiling; `make gpu-check` measures whether it pays off. `reduce-overhead` replays captured CUDA graphs on
    a GPU (on a CPU inductor compiles the same graph without them)."""

    def __init__(self, mode: Any = True):
        self.mode = None if mode in (True, "default") else mode

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = getattr(pl_module, "model", None)
        if model is not None and getattr(model, "_compiled_call_impl", None) is None:
            torch._dynamo.reset()  # a model compiled earlier in this process (one per process) holds no cache slots
            model.compile(mode=self.mode)
