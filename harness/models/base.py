"""What every family's LightningModule shares: the backbone, the forward pass and training step, the optimizer and
schedule, exact resume, evaluation outputs.

A family module names the batch fields its model reads (`inputs`, `targets`), and implements `validation_step`
(updating its metrics) and `eval_outputs` (per-example tensors for a test batch, always with the example's `index`).
The base class collects those outputs across batches and DDP ranks, so scoring code sees one array per field, in
dataset order.

Backbone arguments (`model_path`, `model_ref`, `model_source`, `revision`, `dropout`, `attn_implementation`) reach a
module as keyword arguments and are saved flat in its hyperparameters, so checkpoints written before and after this
layout load alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from transformers import AutoConfig, get_scheduler

from harness.compress.structured import Remapped, load_vocab_map
from harness.data.resident import ResidentBatch
from harness.models import transfer as transfer_modes
from harness.models.loading import ResolvedModel, load_pretrained, resolve_model
from harness.models.sharding import local_norm
from harness.runtime import resolve_fused

_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def target_tokens(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """How many label positions a language-model loss averages over (causal models shift labels by one)."""
    return (labels[:, 1:] != -100).sum() if causal else (labels != -100).sum()


# encoders whose SDPA attention takes a 4-D boolean padding mask as it is, with the 2-D mask's result (checked on
# random tiny models of each type, transformers 5.25)
MASK_4D_MODELS = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "camembert"})


class HarnessModule(L.LightningModule):
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")  # batch fields the model reads
    targets: dict[str, str] = {"labels": "labels"}  # the model's target argument -> the batch field holding it
    peft_task: Optional[str] = None  # peft's TaskType for adapter modes (lora, prompt_tuning); None: not offered

    def __init__(self, optim: dict[str, Any]):
        super().__init__()
        self.optim = optim
        self._eval_buffer: list[dict[str, torch.Tensor]] = []
        self.test_outputs: Optional[dict[str, torch.Tensor]] = None
        self._pending_rng: Optional[dict[str, Any]] = None
        self.grad_norm: Optional[torch.Tensor] = None  # the last clipped step's gradient norm (a device tensor)
        self.host_tokens = 0  # real tokens of the training batches so far (StepMonitor)

    # ---- backbone ------------------------------------------------------------------------------------------------
    def load_backbone(
        self,
        auto_cls: Any,
        model_path: str,
        model_ref: Optional[str] = None,
        model_source: str = "local",
        revision: Optional[str] = None,
        dropout: Optional[float] = None,
        attn_implementation: Optional[str] = "sdpa",
        transfer: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        """`self.model` from `auto_cls.from_pretrained`, with the dropout override and attention implementation,
        made to train in `transfer`'s mode (harness/models/transfer.py); `self.newly_initialized` lists the weights
        the checkpoint did not have (e.g. a new task head). A saved adapter loads on the base model it names."""
        resolved = ResolvedModel(model_ref or model_path, model_path, model_source, revision=revision)
        adapter = transfer_modes.saved_adapter(model_path)
        weights = resolve_model(adapter["base_model_name_or_path"]) if adapter else resolved
        if dropout is not None:
            config = load_pretrained(AutoConfig.from_pretrained, weights)
            kwargs.update({k: dropout for k in _DROPOUT_KEYS if hasattr(config, k)})
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        # float32 weights whatever the checkpoint stores (transformers' default "auto" keeps a bf16 file in bf16, and
        # AdamW on bf16 weights loses small updates); mixed precision comes from trainer.precision
        kwargs.setdefault("dtype", torch.float32)
        self.model, info = load_pretrained(auto_cls.from_pretrained, weights, output_loading_info=True, **kwargs)
        self.newly_initialized = sorted(info.get("missing_keys", []))
        if adapter:  # the adapter carries the trained head (peft's modules_to_save) with its own weights
            # peft trains a loaded LoRA further; a loaded prompt-learning adapter only evaluates
            lora = adapter.get("peft_type") == "LORA"
            self.model = transfer_modes.load_adapter(self.model, model_path, trainable=lora)
            self.newly_initialized = []
            transfer = None
        self.model, self.transfer_info = transfer_modes.apply(self.model, transfer, self.peft_task)
        vocab_map = load_vocab_map(Path(weights.path))  # a model whose vocabulary was trimmed (prune-structured)
        if vocab_map is not None:
            self.model = Remapped(self.model, vocab_map)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds

    def configure_model(self) -> None:
        """Under trainer.strategy=fsdp each repeated layer, then the rest, is sharded across the ranks
        (harness/models/sharding.py); under every other strategy the model stays whole."""
        trainer = self._trainer
        if trainer is None:
            return
        from harness.models.sharding import is_sharded, shard

        if is_sharded(trainer):
            shard(self, self.model, trainer.strategy.fsdp_mesh, str(trainer.precision))

    # ---- training ------------------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch's real (non-pad) tokens, counted on the host before it moves to the device (numpy on the
        loader's tensor: no device work, no aten call), for the step monitor's tokens/s."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return batch
        if isinstance(batch, ResidentBatch):  # a batch of a device-resident split: its count came with its indices
            self.host_tokens += batch.tokens
        elif isinstance(batch, dict) and "attention_mask" in batch:
            mask = batch["attention_mask"]
            self.host_tokens += int(mask.numpy().sum() if mask.device.type == "cpu" else mask.sum())
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model(**self.model_inputs(batch), **{arg: batch.get(key) for arg, key in self.targets.items()})

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch fields the model reads. An encoder with SDPA attention gets its padding mask as the 4-D boolean
        mask attention takes ([batch, 1, 1, keys]): from a 2-D mask transformers first asks whether it holds any
        padding at all (`if padding_mask.all():`), a host-device sync on every forward on a GPU; the 4-D mask is used
        as it is, with the same result (tests/test_device_paths.py)."""
        inputs = {k: batch[k] for k in self.inputs if k in batch}
        mask = inputs.get("attention_mask")
        if self.mask_4d and mask is not None and mask.dim() == 2 and self._sdpa():
            inputs["attention_mask"] = mask[:, None, None, :].bool()
        return inputs

    mask_4d = False  # encoders (classification, extractive QA): see model_inputs

    def _sdpa(self) -> bool:
        """SDPA attention in an encoder known to take a 4-D mask as it is (each checked equal to its 2-D-mask
        forward), and no prompt tuning (its virtual tokens extend a 2-D mask)."""
        from transformers import PreTrainedModel

        model = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft adapter
        if not isinstance(base, PreTrainedModel):  # a compressed variant (ONNX graph, int8 wrapper) takes 2-D inputs
            return False
        config = getattr(model, "config", None)
        peft = getattr(model, "active_peft_config", None)
        return (
            getattr(config, "_attn_implementation", None) == "sdpa"
            and getattr(config, "model_type", None) in MASK_4D_MODELS
            and not getattr(peft, "is_prompt_learning", False)
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        n = len(batch["input_ids"])
        self.log(
            "train_loss", self._global_loss(out.loss, n), on_step=True, on_epoch=False, prog_bar=True, batch_size=n
        )
        return out.loss

    def _global_loss(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """The logged training loss is the global batch's: under DDP each rank holds a slice of it, and the slices
        can differ in size, so the ranks' means are weighted by their examples (one small all-reduce per step)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return loss.detach()
        both = torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=loss.device)])
        both = trainer.strategy.reduce(both, reduce_op="sum")
        return both[0] / both[1]

    # ---- optimization --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # biases and normalization weights are not decayed (as in BERT's original recipe)
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": o["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # "auto" reaches here from modules saved before the setting, and from callers that do not resolve it
        fused = resolve_fused(o.get("fused", "auto"), self.device.type)
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        sched = get_scheduler(
            o["scheduler"], opt, num_warmup_steps=int(o["warmup_ratio"] * total), num_training_steps=total
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    def clips_itself(self, trainer: Any) -> bool:
        """Whether `configure_gradient_clipping` clips (and keeps the norm) itself on this trainer's steps."""
        algorithm = str(getattr(trainer, "gradient_clip_algorithm", None) or "norm")
        return bool(trainer.gradient_clip_val) and _clips_like_harness(trainer) and algorithm.endswith("norm")

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: Optional[str] = None
    ) -> None:
        """Global-norm clipping (`trainer.gradient_clip_val`) that also works with a fused optimizer, under every
        precision; the norm it computes is kept (`grad_norm`) for the divergence check, so no second pass reads the
        gradients.

        Lightning refuses to clip for an optimizer that unscales fp16 gradients inside its step (fused AdamW), even
        under bf16 where there is no scaler. Under bf16 and float32 nothing needs unscaling: clip. Under 16-mixed,
        Lightning leaves a fused optimizer's gradients scaled; they are unscaled here first (the scaler then tells the
        fused step they are unscaled already, and still skips a step with inf/NaN gradients)."""
        self.grad_norm = None
        if not gradient_clip_val:
            return
        trainer = self.trainer
        if not self.clips_itself(trainer):
            # sharded strategies clip their own way (FSDP's norm spans ranks): Lightning's path, fused refused there
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        raw = getattr(optimizer, "_optimizer", optimizer)
        if scaler is not None and getattr(raw, "_step_supports_amp_scaling", False):
            scaler.unscale_(raw)
        params = [p for group in raw.param_groups for p in group["params"] if p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
            self.grad_norm = local_norm(norm)  # sharded gradients: the global norm across the ranks

    # ---- exact resume --------------------------------------------------------------------------------------------
    # Lightning restores weights, optimizer, schedule and loop counters; the random state (dropout masks) is ours.
    # It is applied at the first training batch after a resume, not on load: creating the data iterator in between
    # draws from the generator, and an uninterrupted run made that draw before the checkpoint.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():  # CUDA's generators exist only with a GPU (a CPU run has none to save)
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["harness_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get("harness_rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            torch.set_rng_state(self._pending_rng["torch"])
            if "cuda" in self._pending_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._pending_rng["cuda"])
            self._pending_rng = None

    # ---- evaluation outputs --------------------------------------------------------------------------------------
    def eval_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.eval_outputs(batch)
        self._eval_buffer.append({k: v.detach() for k, v in out.items()})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self.eval_outputs(batch)

    def on_test_epoch_start(self) -> None:
        self._eval_buffer = []
        self.test_outputs = None

    def on_test_epoch_end(self) -> None:
        self.test_outputs = self._gather(self._eval_buffer)
        self._eval_buffer = []

    def _gather(self, chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        local = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
        if self.trainer.world_size > 1:
            local = _gather_uneven(self, local)
        if not local:
            return {}
        # DDP samplers may repeat examples; keep one copy of each, in dataset order
        index = local["index"].long()
        order = torch.argsort(index, stable=True)
        index_sorted = index[order]
        first = torch.ones_like(index_sorted, dtype=torch.bool)
        first[1:] = index_sorted[1:] != index_sorted[:-1]
        keep = order[first]
        return {k: v[keep].cpu() for k, v in local.items()}


def _clips_like_harness(trainer: Any) -> bool:
    """Strategies where harness clips itself: every rank holds the whole gradient after backward (one device, DDP),
    or the gradients are DTensor shards whose norm clip_grad_norm_ reduces across the ranks (FSDP2)."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from harness.models.sharding import ShardedStrategy

    return type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy, ShardedStrategy)


def _gather_uneven(module: L.LightningModule, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """all_gather for per-rank tensors of different lengths: pad to the longest, gather, then drop the padding."""
    n = torch.tensor([len(next(iter(local.values())))], device=module.device)
    sizes = module.all_gather(n).view(-1)
    longest = int(sizes.max())
    out = {}
    for k, v in local.items():
        pad = torch.zeros((longest - len(v), *v.shape[1:]), dtype=v.dtype, device=v.device)
        g = module.all_gather(torch.cat([v, pad]))  # [world, longest, ...]
        out[k] = torch.cat([g[r, : int(sizes[r])] for r in range(len(sizes))])
    return out
