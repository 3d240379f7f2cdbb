"""Processes started outside Lightning: torchrun, SLURM's srun, or one process per node with NODE_RANK.

Under single-node DDP, Lightning's launcher starts the extra processes itself, after rank 0 has opened (or resumed)
the MLflow run, and they inherit its decision through the environment (HARNESS_RUN_ID, HARNESS_RESUMED). Processes a
cluster launcher starts on other nodes inherit nothing, so before anything else they join the process group early
(Lightning then uses that group as it is) and rank 0 broadcasts what it decided: the run id and whether it resumes,
or the error that stopped it, so no rank waits on a run that will never start.

- torchrun (any number of nodes): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT come from torchrun.
- SLURM: `srun` with one task per device; Lightning reads SLURM_* and so does this module.
- By hand: the same command on every node with `trainer.num_nodes=N trainer.devices=1`, NODE_RANK=0..N-1 and the
  same MASTER_ADDR / MASTER_PORT (more devices per node: use torchrun).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, Optional

from harness.errors import ConfigError, RunFailed

TIMEOUT_ENV = "HARNESS_DIST_TIMEOUT_S"  # how long ranks wait for each other to join (default 600 s)


def launched_world(num_nodes: int, devices: Any) -> Optional[tuple[int, int, int]]:
    """(global rank, world size, local rank) when this process is one of several started outside Lightning; None
    for a single process or one that Lightning's own launcher started (or will start)."""
    from harness.tracking.mlflow_run import is_global_zero

    env = os.environ
    if "HARNESS_RUN_ID" in env and not is_global_zero():  # started by Lightning's launcher: the decision came with it
        return None
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env):  # torchrun
        world = int(env["WORLD_SIZE"])
        return (int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0"))) if world > 1 else None
    several = num_nodes > 1 or (isinstance(devices, int) and devices > 1) or str(devices).isdigit() and int(devices) > 1
    if several and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:  # srun, one task per device
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    if num_nodes > 1:
        if str(devices) not in ("1", "auto") and devices != 1:
            raise ConfigError(
                f"trainer.num_nodes={num_nodes} with trainer.devices={devices}, started by hand on each node",
                "start one process per device with torchrun (or srun under SLURM), or use trainer.devices=1 "
                "(see docs/scale-out.md, 'Several nodes')",
            )
        for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
            if key not in env:
                raise ConfigError(
                    f"trainer.num_nodes={num_nodes}, but {key} is not set",
                    "set MASTER_ADDR and MASTER_PORT (node 0's address and a free port) and NODE_RANK (0..N-1) "
                    "on every node, or launch with torchrun / srun",
                )
        rank = int(env["NODE_RANK"])
        if not 0 <= rank < num_nodes:
            raise ConfigError(f"NODE_RANK={rank} is outside 0..{num_nodes - 1}", "number the nodes 0..N-1")
        return rank, num_nodes, 0
    return None


def join(rank: int, world: int, local_rank: int, accelerator: str) -> Any:
    """Join the default process group (Lightning reuses it) and return a CPU (gloo) group for our own messages."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # NCCL and a device per rank need GPUs; on a CPU the same launch takes gloo (tests/test_ddp.py runs it)
        cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        try:
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timeout)
        except Exception as e:  # DistNetworkError / RuntimeError: the rendezvous failed or timed out
            raise RunFailed(
                f"rank {rank} of {world} could not join the others at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                "start the same command on every node with the same MASTER_ADDR/MASTER_PORT, reachable from all; "
                f"{TIMEOUT_ENV} sets how long they wait (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME pick the network)",
            ) from None
    return dist.new_group(backend="gloo")


def share(group: Any, decide: Callable[[], dict]) -> dict:
    """Rank 0 runs `decide` and every rank gets its result; an error on rank 0 reaches every rank."""
    import torch.distributed as dist

    box: list[Any] = [None]
    error: Optional[BaseException] = None
    if dist.get_rank() == 0:
        try:
            box[0] = decide()
        except BaseException as e:
            error = e
            box[0] = {"error": str(getattr(e, "message", e))[:2000]}
    dist.broadcast_object_list(box, src=0, group=group)
    if error is not None:
        raise error
    if "error" in box[0]:
        raise RunFailed(f"rank 0 stopped before training: {box[0]['error']}", "fix what rank 0 reported")
    return box[0]


# what Lightning puts in the environment when it starts a process group: a process started later inherits it, and
# LOCAL_RANK alone makes Lightning treat that process as one of several launched from outside (it then waits for
# peers it never starts)
RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE")


class OwnProcessGroup:
    """A process group a run starts for this process alone (one process sharded, e.g. the GPU check's imdb-fsdp
    phase, a suite's entry, a test calling the CLI in-process) ends with the run: Lightning leaves the group alive and
    its rendezvous in the environment, so a later run in this process, or any process it starts, would be sent to a
    port this process still holds ("address already in use") or wait for peers as a rank launched from outside. A
    group of several processes, or one that was there before the run, is left as it is."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.before = {k: os.environ.get(k) for k in RENDEZVOUS_ENV}
        self.existed = dist.is_available() and dist.is_initialized()

    def release(self) -> None:
        import torch.distributed as dist

        if self.existed or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != 1:
            return
        dist.destroy_process_group()
        for key, value in self.before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
