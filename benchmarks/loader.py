"""What feeding a training step costs the main process: the host loader against a device-resident split.

    make bench            (or: python benchmarks/loader.py [--rows 3200] [--device cpu|cuda] [--workers 4])

IMDB training reviews tokenized as the full profile does (512 tokens, batches of 32 padded to a multiple of 64, length
buckets), one epoch of the harness's own training loader, each batch moved to `--device` as Lightning moves it:
- `host, 0 workers`: the main process pads every batch (a Python loop over its rows), then copies it;
- `host, N workers`: the full profile's loader (workers pad, the main process receives, pins on a GPU, copies);
- `resident`: the split padded once and held on the device (`data.device_resident`); a batch is its indices, the
  rows are gathered there.
Reported: milliseconds of the main process per batch (a GPU's copies and gathers are synchronized, so included), and
each path's ratio to `host, 0 workers` measured in the same run. On a CPU the "device" is the host itself, so the
resident path's gather is host work too: a CPU shows what the padding costs, a GPU what the step is spared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3200, help="IMDB training reviews (default: 100 batches of 32)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--workers", type=int, default=4, help="loader workers of the full profile's host loader")
    ap.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR"))
    args = ap.parse_args()

    import torch
    from train_throughput import training_rows
    from transformers import AutoTokenizer

    from harness.config import resolve_run_config
    from harness.data.base import Pretokenized
    from harness.data.classification import ClassificationDataModule
    from harness.data.resident import ResidentBatch
    from harness.families.registry import get_task
    from harness.models.loading import packaged_path

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = Path(packaged_path("sentence-transformers/all-MiniLM-L6-v2"))
    rows = training_rows(model, args.rows, 512, args.data_dir)
    task = get_task("imdb")
    tokenizer = AutoTokenizer.from_pretrained(str(model))

    def epoch(workers: int, resident: bool) -> float:
        cfg = resolve_run_config(
            task,
            [
                "profile=full",
                f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                f"data.num_workers={workers}",
                f"data.device_resident={str(resident).lower()}",
            ],
        )
        dm = ClassificationDataModule(cfg, task, Pretokenized(), tokenizer)  # type: ignore[arg-type]
        dm.encoded = {"train": rows}
        loader = dm.train_dataloader()
        batches = 0
        started = None
        for b in loader:
            if started is None:  # workers started and the resident split copied: not charged to any batch
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                continue
            moved = (
                b.to(device)
                if isinstance(b, ResidentBatch)
                else {k: v.to(device, non_blocking=True) for k, v in b.items()}
            )
            assert moved["input_ids"].shape[0] > 0
            batches += 1
        if device == "cuda":  # the copies and gathers this epoch queued are part of its cost
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000 / batches

    paths = [
        ("host, 0 workers", 0, False),
        (f"host, {args.workers} workers", args.workers, False),
        ("resident", 0, True),
    ]
    epoch(0, True)  # warm-up: first-use costs (allocator, CUDA context) outside the measured epochs
    ms = {name: min(epoch(w, r) for _ in range(3)) for name, w, r in paths}
    base = ms["host, 0 workers"]
    print(f"loader: {len(rows):,} IMDB reviews, batch 32, max length 512, pad x64, device {device} (best of 3 epochs)")
    print(f"{'path':18} {'ms/batch':>9} {'vs host, 0 workers':>19}")
    for name, value in ms.items():
        print(f"{name:18} {value:9.3f} {value / base:18.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
