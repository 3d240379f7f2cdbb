"""Sharded training (`trainer.strategy=fsdp`): PyTorch's FSDP2 (`fully_shard`) through Lightning's
ModelParallelStrategy, on GPUs (NCCL) and CPUs (gloo) alike, one node or several, with DDP's launch and config keys.

Each rank keeps 1/N of every parameter, of its gradient and of both Adam moments; a layer's full weights exist only
while that layer computes (all-gathered before, freed after). Every repeated transformer layer is its own shard
group, then the rest of the model (embeddings, heads) is the root group.

- Checkpoints are folders of shards (torch.distributed.checkpoint, every rank writes its own): written to a fresh
  folder, then `last.ckpt` (a symbolic link) is switched to it in one rename, so a kill -9 leaves the previous
  checkpoint whole.
- The logged model is gathered on rank 0 (a collective every rank joins) into an ordinary, unsharded copy of the
  module, which exports, serves and compresses like any other run's.
- `trainer.shard_size` shards within groups of that many ranks and replicates across the groups (HSDP: shard within a
  node, replicate across nodes); the world size must be a multiple of it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from harness.errors import ConfigError

STRATEGY = "fsdp"
_DTYPES = {"bf16-mixed": torch.bfloat16}


def layer_stacks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated layers (a BERT's `encoder.layer[i]`, a Llama's `model.layers[i]`, T5's encoder and
    decoder blocks: the children of every ModuleList of two or more modules of one class that hold parameters), and
    the modules the model names as never to be split (`_no_split_modules`, e.g. a BERT's embeddings). A module that
    shares a weight with the rest of the model (embeddings tied to the output layer) stays in the root group: a tied
    weight must be sharded once."""
    named = set(getattr(model, "_no_split_modules", None) or [])
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    found: list[tuple[str, torch.nn.Module]] = []
    for qual, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) >= 2:
            if len({type(m) for m in module}) == 1 and any(True for _ in module[0].parameters()):
                found += [(f"{qual}.{i}" if qual else str(i), m) for i, m in enumerate(module)]
        elif type(module).__name__ in named and qual:
            found.append((qual, module))
    unique = {id(m): (q, m) for q, m in found}
    kept = [
        (q, m)
        for q, m in unique.values()
        if all(n.startswith(q + ".") for p in m.parameters() for n in owners[id(p)])
        and not any(q.startswith(o + ".") for o, _ in unique.values())  # inside another group: its group's
    ]
    return [m for _, m in kept]


def check_shardable(model: torch.nn.Module, name: str) -> None:
    """One line when a model has nothing to shard by layer (a compressed variant, a model with no repeated layers)."""
    if not layer_stacks(model):
        raise ConfigError(
            f"trainer.strategy=fsdp cannot shard {name}: it has no stack of repeated layers (a transformer's blocks) "
            "to shard one by one",
            "train it with trainer.strategy=ddp (every rank holds the whole model), or shard the model it came from",
        )


def shard(module: torch.nn.Module, model: torch.nn.Module, mesh: Any, precision: str) -> None:
    """`fully_shard` each repeated layer of `model`, then `module` (the LightningModule: what remains, embeddings and
    heads, in the root group). Under bf16-mixed the layers' weights travel (all-gather) and compute in bf16 and the
    gradients are reduced in float32; the sharded weights and the optimizer stay float32."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(module, FSDPModule):  # each Trainer stage (fit, test) calls configure_model again
        return
    dtype = _DTYPES.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    layers = layer_stacks(model)
    for i, layer in enumerate(layers):
        # the last layer's weights are needed again at once by backward: keeping them gathered saves one all-gather
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    module.shard_info = ShardInfo(
        processes=mesh.size(mesh.ndim - 1),
        replicas=mesh.size(0) if mesh.ndim == 2 else 1,
        layers=len(layers),
        local=sum(_local(p).numel() for p in module.parameters()),
        total=sum(p.numel() for p in module.parameters()),
    )


def _local(p: torch.Tensor) -> torch.Tensor:
    to_local = getattr(p, "to_local", None)
    return to_local() if to_local is not None else p


@dataclass(frozen=True)
class ShardInfo:
    """What sharding did: over how many processes, how many layer groups, and this rank's share of the parameters."""

    processes: int
    replicas: int
    layers: int
    local: int
    total: int

    def line(self) -> str:
        return (
            f"sharded (FSDP2) over {self.processes} processes"
            + (f", replicated {self.replicas} times (HSDP)" if self.replicas > 1 else "")
            + f", {self.layers} groups (layers, embeddings) and the rest: each holds "
            f"{self.local:,} of {self.total:,} parameters ({100 * self.local / max(self.total, 1):.1f}%), with their "
            "gradients and optimizer state"
        )


def is_sharded(trainer: Any) -> bool:
    return isinstance(getattr(trainer, "strategy", None), ShardedStrategy)


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm computed over sharded (DTensor) gradients, as the plain tensor every rank agrees on."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty elsewhere): a collective that every rank must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_mesh(world: int, shard_size: Optional[int], device: torch.device) -> Any:
    """The device mesh FSDP shards over: all ranks (1-D), or groups of `shard_size` ranks replicated across groups
    (2-D, HSDP)."""
    from torch.distributed.device_mesh import init_device_mesh

    if not shard_size or shard_size == world:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // shard_size, shard_size), mesh_dim_names=("replicate", "shard"))


def check_world(world: int, shard_size: Optional[int]) -> None:
    if shard_size and (shard_size > world or world % shard_size):
        raise ConfigError(
            f"trainer.shard_size={shard_size} does not divide the {world} processes of this run (trainer.num_nodes x "
            "trainer.devices)",
            f"use a shard_size that divides {world} (e.g. the devices of one node), or leave it out to shard over all",
        )


class ShardedStrategy(ModelParallelStrategy):
    """ModelParallelStrategy with data parallelism over every rank and no tensor parallelism; the mesh FSDP uses is
    `shard_mesh` (all ranks, or HSDP groups); checkpoints are switched in atomically."""

    strategy_name = STRATEGY

    def __init__(self, shard_size: Optional[int] = None, **kwargs: Any):
        super().__init__(data_parallel_size=1, tensor_parallel_size=1, **kwargs)
        self.shard_size = shard_size
        self.fsdp_mesh: Any = None

    def _setup_distributed(self) -> None:
        # the sizes are known once the cluster environment has counted the processes, before the mesh is built
        super()._setup_distributed()
        check_world(self.world_size, self.shard_size)
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1

    def setup_environment(self) -> None:
        super().setup_environment()
        if self.shard_size and self.shard_size != self.world_size:
            self.fsdp_mesh = shard_mesh(self.world_size, self.shard_size, self.root_device)
        else:
            self.fsdp_mesh = self.device_mesh["data_parallel"]

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        """Every rank writes its shard into a new folder beside `filepath`; rank 0 then points `filepath` (a link) at
        it in one rename and removes the folder it pointed at before."""
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])
        folder = path.with_name(f".{path.name}.{token}.shards")
        super().save_checkpoint(checkpoint, folder, storage_options)
        self.barrier()
        if self.global_rank == 0:
            before = path.resolve() if path.is_symlink() else None
            link = path.with_name(f".{path.name}.{token}.link")
            os.symlink(folder.name, link)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(link, path)
            if before is not None and before != folder.resolve():
                shutil.rmtree(before, ignore_errors=True)
        self.barrier()

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            target = path.resolve() if path.is_symlink() else None
            path.unlink(missing_ok=True) if path.is_symlink() or path.is_file() else shutil.rmtree(path, True)
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)


def strategy(shard_size: Optional[int]) -> ShardedStrategy:
    return ShardedStrategy(shard_size=shard_size)
