"""Process setup for a run: quiet libraries, thread count, float precision."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

from harness.config import RunConfig
from harness.errors import ConfigError

# messages the libraries print for situations harness handles itself
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches.*",
    r".*LeafSpec.*",
    r".*introduces a better way to train encoder-decoder.*",
    r".*no `val_dataloader`.*",
    r".*all_gather is deprecated.*",
    r".*dataloader.*shuffle.*",
    r".*Total length of .* across ranks is zero.*",  # no validation split
    # our DataModule restores the sampler position itself (state_dict/load_state_dict), which Lightning cannot see
    r".*your dataloader is not resumable.*",
    r".*`is_gradient_checkpointing` is deprecated.*",  # peft asks transformers the old way
    # harness's modules count a batch's tokens before it moves; its data modules leave that hook alone (by design)
    r".*overridden `on_before_batch_transfer` in `LightningModule` but have passed in a.*",
)


_DEFAULT_THREADS: Optional[int] = None  # torch's intra-op threads before any run of this process set them


def configure_runtime(cfg: RunConfig) -> None:
    """Quiet the libraries' console chatter and set threads; done once per process before a run starts."""
    import importlib.util

    import lightning  # noqa: F401  (sets up its loggers on import; quiet them after)
    import torch
    import transformers

    # MLflow configures its loggers on import (quiet them after); it and datasets are absent on a bare GPU host
    if importlib.util.find_spec("mlflow") is not None:
        import mlflow  # noqa: F401

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a tracking server that went away is reported once by the run (its journal), not by every retry and sample
    for name in ("mlflow.system_metrics", "urllib3.connectionpool", "mlflow.utils.rest_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # its SQL errors are raised to the caller as well, which reports them in one line: no logged traceback first
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # the threads asked for, else torch's own default (as the process started): a run with trainer.num_threads=1
    # earlier in the same process (a study's trial, a test) must not leave later runs on one thread, where their
    # float sums split differently and a resumed run ends a hair from the one it continues
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(cfg.trainer.num_threads or _DEFAULT_THREADS)
    # TF32 matmuls exist only on NVIDIA GPUs (on a CPU the flag would also move float32 matmul precision to "high")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_sdpa_backend(cfg.model.sdpa_backend)


def set_sdpa_backend(backend: str) -> None:
    """Which kernels PyTorch's scaled-dot-product attention may use: all (auto) or the one named. Set for the
    process, and set back to all by the next run that says auto. The CPU's attention obeys the same switches (it has
    flash and math kernels), so a CPU run with model.sdpa_backend=math or flash takes the branch a GPU run takes."""
    import torch

    b = torch.backends.cuda
    b.enable_flash_sdp(backend in ("auto", "flash"))
    b.enable_mem_efficient_sdp(backend in ("auto", "efficient"))
    b.enable_cudnn_sdp(backend in ("auto", "cudnn"))
    b.enable_math_sdp(backend in ("auto", "math"))


def device_type(accelerator: str) -> str:
    """The torch device type a run with `trainer.accelerator` trains on (Lightning's `auto` order: CUDA, Apple's
    GPU, then the CPU)."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return accelerator


def fused_devices() -> tuple[str, ...]:
    """Device types torch has a fused AdamW kernel for (CUDA and the CPU on every torch harness supports)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # a future torch that moved the (private) list: the two kernels every release since 2.4 has
        return ("cuda", "cpu")


def resolve_fused(setting: Any, device: str) -> bool:
    """`optim.fused`: auto is the fused AdamW kernel wherever torch has one for `device`; true where it has none is
    refused here, in one line, rather than by torch at the first step."""
    if setting == "auto":
        return device in fused_devices()
    if setting and device not in fused_devices():
        raise ConfigError(
            f"optim.fused=true, but this torch ({_torch_version()}) has no fused AdamW kernel for {device}",
            "use optim.fused=auto (fused where the device has the kernel) or false",
        )
    return bool(setting)


def _torch_version() -> str:
    import torch

    return torch.__version__


def check_devices(cfg: RunConfig) -> None:
    """The accelerator and device count asked for exist here (Lightning's own errors say less, and say it later)."""
    import torch

    t = cfg.trainer
    if t.accelerator in ("gpu", "cuda"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not visible:
            raise ConfigError(
                f"trainer.accelerator={t.accelerator}, but torch sees no CUDA device on this machine",
                "use trainer.accelerator=auto (a GPU where there is one, else the CPU) or cpu",
            )
        if isinstance(t.devices, int) and t.devices > visible:
            raise ConfigError(
                f"trainer.devices={t.devices}, but {visible} CUDA device(s) are visible",
                f"use trainer.devices={visible} or fewer (or auto)",
            )
    if t.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps, but this machine has no Apple GPU that torch can use",
            "use trainer.accelerator=auto or cpu",
        )


PACKED_FAMILIES = ("causal_lm", "masked_lm")  # families whose batches can be packed blocks without padding


def check_combinations(cfg: RunConfig, family: str, device: str) -> None:
    """Settings that are valid one by one but cannot work together on `device`, refused in one line before training
    (a CPU test passes device="cuda": these are CUDA's limits, and the refusal is the branch a GPU run takes)."""
    check_sharding(cfg)
    if device != "cuda":
        return
    padded = not (family in PACKED_FAMILIES and cfg.data.packing)
    if cfg.model.sdpa_backend == "flash" and padded and cfg.model.attn_implementation == "sdpa":
        raise ConfigError(
            f"model.sdpa_backend=flash on a CUDA device: PyTorch's flash kernel takes no attention mask, and a "
            f"{family} run's batches are padded (its first forward would stop with 'No available kernel')",
            "use model.sdpa_backend=auto (flash where no mask is needed, another kernel where one is) or efficient",
        )
    if cfg.trainer.compile == "reduce-overhead" and cfg.trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            f"trainer.compile=reduce-overhead with trainer.accumulate_grad_batches="
            f"{cfg.trainer.accumulate_grad_batches}: CUDA graphs replay into the buffers of the previous step while "
            "its gradients are still being accumulated",
            "use trainer.compile=true (compiled without CUDA graphs), or accumulate_grad_batches=1 with a larger "
            "data.batch_size",
        )


def check_sharding(cfg: RunConfig) -> None:
    """What sharded training (trainer.strategy=fsdp, FSDP2) cannot be combined with, on every device."""
    t = cfg.trainer
    if t.strategy.startswith("fsdp") and t.strategy != "fsdp":
        raise ConfigError(
            f"trainer.strategy={t.strategy} is Lightning's first FSDP (GPU only; its full-state save is unreliable)",
            "use trainer.strategy=fsdp: FSDP2, on GPUs and CPUs (docs/sharding.md)",
        )
    if t.shard_size and t.strategy != "fsdp":
        raise ConfigError(
            f"trainer.shard_size={t.shard_size} applies to sharded training only (trainer.strategy is {t.strategy})",
            "add trainer.strategy=fsdp, or leave trainer.shard_size out",
        )
    if t.strategy != "fsdp":
        return
    if t.precision in ("16-mixed", "16"):
        raise ConfigError(
            f"trainer.precision={t.precision} with trainer.strategy=fsdp: float16's loss scaler is not supported for "
            "sharded training here",
            "use trainer.precision=bf16-mixed (GPUs since Ampere) or 32-true",
        )
    if t.compile in ("reduce-overhead", "max-autotune"):
        raise ConfigError(
            f"trainer.compile={t.compile} with trainer.strategy=fsdp: CUDA graphs cannot capture the all-gathers and "
            "reduce-scatters that sharding runs at every layer",
            "use trainer.compile=true (compiled without CUDA graphs), or trainer.compile=false",
        )


def resolve_device_settings(cfg: RunConfig) -> None:
    """The settings whose `auto` depends on the machine, decided here in place (precision, the fused optimizer), so
    the run logs the choice made rather than "auto"."""
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg.optim.fused = resolve_fused(cfg.optim.fused, device_type(cfg.trainer.accelerator))


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 mixed precision where the hardware does bf16 math natively, else full float32.

    On CPUs with AVX-512 BF16 / AMX, bf16 autocast trains ~1.5x and infers ~1.7x faster than float32 (MiniLM,
    length 128, measured on the 2-core CI machine); without native support it is slower, so float32 is kept.
    """
    if precision != "auto":
        return precision
    import torch

    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if cuda:
        return auto_precision("cuda", torch.cuda.is_bf16_supported())
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return auto_precision("cpu", native)


def auto_precision(device: str, bf16: bool) -> str:
    """The `auto` precision for a device that does (or does not) do bf16 math natively: a GPU without bf16 (before
    Ampere) trains in float16 with a loss scaler, a CPU without it in float32 (float16 autocast is slow there)."""
    if bf16:
        return "bf16-mixed"
    return "16-mixed" if device == "cuda" else "32-true"
