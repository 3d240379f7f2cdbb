"""What sharding buys: each rank's bytes of parameters, gradients and AdamW state under DDP (every rank holds all
of them) and under FSDP2 (trainer.strategy=fsdp: each holds 1/N), measured on real tensors after one training step,
and the largest model each could train in a given memory.

    make bench-shard                                  # CPU: 1 and 2 processes (gloo), SmolLM2-135M and MiniLM
    make bench-shard DEVICE=cuda ARGS="--ranks 1,2,4,8 --memory-gb 80"   # a GPU host: one process per GPU (NCCL)

The bytes are what the ranks' tensors hold (a DTensor counts its local shard), not an estimate; on a GPU the peak
memory torch allocated during the step (activations and the layer gathered for compute included) is reported too.
The largest-model column divides the memory by the measured state bytes per parameter: activations and the
gathered layer come on top, so it is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2")


def _local_bytes(t) -> int:
    to_local = getattr(t, "to_local", None)
    t = to_local() if to_local is not None else t
    return t.numel() * t.element_size()


def _worker(rank: int, world: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModel, AutoModelForCausalLM

    from harness.models.loading import load_pretrained, resolve_model
    from harness.models.sharding import shard

    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    resolved = resolve_model(args.model)
    causal = "SmolLM" in args.model or "llama" in args.model.lower()
    auto = AutoModelForCausalLM if causal else AutoModel
    model = load_pretrained(auto.from_pretrained, resolved, dtype=torch.float32)
    model.train()
    if args.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, model, init_device_mesh(device.type, (world,)), "32-true")
        wrapped = model
    else:
        model.to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    ids = torch.randint(100, 1000, (args.batch, args.length), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_ = wrapped(input_ids=ids, labels=ids) if causal else wrapped(input_ids=ids)
    loss = out_.loss if causal else out_.last_hidden_state.float().pow(2).mean()
    loss.backward()
    grads = sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    opt.step()
    state = sum(_local_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    params = sum(_local_bytes(p) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())  # a DTensor's numel is the whole parameter's
    row = {
        "model": args.model,
        "strategy": args.strategy,
        "ranks": world,
        "parameters": total,
        "param_bytes": params,
        "grad_bytes": grads,
        "optim_bytes": state,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    if rank == 0:
        Path(out).write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()


def measure(model: str, strategy: str, ranks: int, args: argparse.Namespace) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    one = argparse.Namespace(**{**vars(args), "model": model, "strategy": strategy})
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "row.json")
        mp.spawn(_worker, args=(ranks, one, port, out), nprocs=ranks, join=True)
        return json.loads(Path(out).read_text())


def table(rows: list[dict], memory_gb: float) -> str:
    lines = [
        "| model | strategy | ranks | params MiB/rank | grads MiB/rank | AdamW MiB/rank | states MiB/rank "
        f"| bytes/param | vs DDP | largest model in {memory_gb:g} GB (states only) | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["model"], r["ranks"]): r for r in rows if r["strategy"] == "ddp"}
    for r in rows:
        states = r["param_bytes"] + r["grad_bytes"] + r["optim_bytes"]
        per = states / r["parameters"]
        ddp = base.get((r["model"], r["ranks"]))
        ratio = states / (ddp["param_bytes"] + ddp["grad_bytes"] + ddp["optim_bytes"]) if ddp else float("nan")
        largest = memory_gb * 1e9 / per
        peak = f"{r['peak_cuda_bytes'] / 2**20:,.0f}" if r["peak_cuda_bytes"] else "-"
        lines.append(
            f"| {r['model'].split('/')[-1]} | {r['strategy']} | {r['ranks']} | {r['param_bytes'] / 2**20:,.1f} | "
            f"{r['grad_bytes'] / 2**20:,.1f} | {r['optim_bytes'] / 2**20:,.1f} | {states / 2**20:,.1f} | {per:.2f} | "
            f"{ratio:.2f}x | {largest / 1e9:,.2f} B parameters | {peak} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    p.add_argument("--ranks", default="1,2", help="comma-separated process counts (on a GPU: at most the GPUs)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--memory-gb", type=float, default=80.0, help="the memory the largest-model column fills")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.device in ("auto", "gpu"):
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"  # auto: a GPU where there is one
    rows = []
    for model in args.models.split(","):
        for ranks in (int(n) for n in args.ranks.split(",")):
            for strategy in ("ddp", "fsdp"):
                rows.append(measure(model, strategy, ranks, args))
                print(f"measured {model} {strategy} x{ranks}", file=sys.stderr, flush=True)
    print(table(rows, args.memory_gb))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
