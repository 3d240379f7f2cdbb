"""Framework overhead: the harness training path vs a plain PyTorch loop, same model, same batches, one process.

    make bench            (or: python benchmarks/overhead.py [--steps 50] [--task imdb] [key=value ...])

Both sides train the quick profile's model (MiniLM) from the same initial weights on the same pre-tokenized,
length-bucketed batches of the task's quick-profile training subset, with the same precision, optimizer and
schedule. The plain loop is the floor: forward, backward, clip, AdamW step, scheduler step. The harness side is
`Trainer.fit` with everything a real run has (Lightning loop, step metrics, line progress, and one checkpoint
inside the timed steps, as a real run writes one every 50 steps), minus MLflow. Prints samples/s for both and the
ratio. Timing starts after warm-up steps on each side.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="imdb")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import lightning as L
    import torch
    from transformers import AutoTokenizer

    from harness.config import resolve_run_config
    from harness.data.resident import batch_to
    from harness.data.sources import load_task_data
    from harness.families import get_family
    from harness.families.registry import get_task
    from harness.models.loading import resolve_model
    from harness.run.runner import RunState
    from harness.run.training import build_trainer
    from harness.runtime import configure_runtime, resolve_device_settings

    task = get_task(args.task)
    cfg = resolve_run_config(task, ["profile=quick", *args.overrides])
    configure_runtime(cfg)
    import warnings

    warnings.filterwarnings("ignore", message=r".*no `val_dataloader`.*")
    cfg.trainer.accelerator = "cpu"
    resolve_device_settings(cfg)
    cfg.tracking.output_dir = os.path.join("/tmp", f"harness-bench-{os.getpid()}")
    cfg.trainer.checkpoint_every_n_steps = 50
    family = get_family(task.family)
    data = load_task_data(task, cfg, ("train",))
    model = resolve_model(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(family.tokenizer_path(model))
    dm = family.build_datamodule(cfg, task, data, tok)
    dm.setup()
    L.seed_everything(cfg.seed, verbose=False)
    module = family.build_module(cfg, task, model)
    initial = copy.deepcopy(module.model.state_dict())
    total = args.warmup + args.steps
    batches = []
    for i, b in enumerate(dm.train_dataloader()):
        if i == total:
            break
        batches.append(batch_to(b, "cpu"))  # a plain dict of tensors, whether the split is resident or not
    bf16 = cfg.trainer.precision.startswith("bf16")
    print(
        f"{task.name}: {total} steps of batch {cfg.data.batch_size}, max length {cfg.data.max_length}, "
        f"precision {cfg.trainer.precision}, AdamW fused={cfg.optim.fused}, {torch.get_num_threads()} threads",
        flush=True,
    )

    # ---- plain PyTorch loop ----------------------------------------------------------------------------------------
    net = module.model
    net.train()
    # the optimizer the harness resolved for this machine (fused AdamW where torch has the kernel)
    fused = bool(cfg.optim.fused)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)))
    t0 = None
    for i, b in enumerate(batches):
        if i == args.warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["label"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    plain = args.steps * cfg.data.batch_size / (time.perf_counter() - t0)

    # ---- harness path ------------------------------------------------------------------------------------------------
    module.model.load_state_dict(initial)
    L.seed_everything(cfg.seed, verbose=False)

    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def __init__(self):
            self.t0 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup and self.t0 is None:
                self.t0 = time.perf_counter()

    clock = Clock()
    cfg.trainer.max_steps = total
    trainer = build_trainer(cfg, None, RunState(cfg), [clock], quiet=True)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    harness_sps = args.steps * cfg.data.batch_size / (time.perf_counter() - clock.t0)

    print(f"plain PyTorch loop : {plain:7.2f} samples/s")
    print(f"harness (Lightning): {harness_sps:7.2f} samples/s")
    print(f"ratio harness/plain: {harness_sps / plain:7.3f}  (overhead {100 * (1 - harness_sps / plain):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
