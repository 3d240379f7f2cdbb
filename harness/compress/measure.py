"""Latency and throughput of a model on this machine's CPU, on real test inputs (warm-up excluded)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SINGLES = 100  # batch-1 requests timed, spread over the test split's lengths
WARMUP = 5
BATCH = 32
BATCHES = 6  # batches of BATCH timed for throughput


@dataclass
class Speed:
    p50_ms: float
    p95_ms: float
    throughput: float  # examples per second at batch BATCH
    threads: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}latency_b1_p50_ms": self.p50_ms,
            f"{prefix}latency_b1_p95_ms": self.p95_ms,
            f"{prefix}throughput_b{BATCH}": self.throughput,
        }


class Inputs:
    """Test inputs kept as the test loop sees them (tokenized, length-sorted batches), cut into requests."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.rows: list[dict[str, torch.Tensor]] = []

    def add(self, batch: dict[str, Any]) -> None:
        mask = batch["attention_mask"]
        for i in range(len(mask)):
            n = int(mask[i].sum())
            self.rows.append({k: batch[k][i : i + 1, :n].cpu().contiguous() for k in self.names if k in batch})

    def singles(self) -> list[dict[str, torch.Tensor]]:
        idx = np.linspace(0, len(self.rows) - 1, num=min(SINGLES, len(self.rows))).round().astype(int)
        return [self.rows[i] for i in idx]

    def batches(self) -> list[dict[str, torch.Tensor]]:
        """Batches of BATCH neighbours in length order (as a length-bucketing server would form them)."""
        out = []
        step = max(len(self.rows) // BATCHES, BATCH)
        for start in range(0, len(self.rows) - BATCH + 1, step):
            group = self.rows[start : start + BATCH]
            width = max(r["attention_mask"].shape[1] for r in group)
            out.append(
                {
                    k: torch.cat([torch.nn.functional.pad(r[k], (0, width - r[k].shape[1])) for r in group])
                    for k in group[0]
                }
            )
        return out[:BATCHES]


def speed(model: Any, inputs: Inputs, threads: int) -> Speed:
    """Batch-1 latency percentiles and batch-32 throughput of `model(**inputs)`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            singles = inputs.singles()
            for r in singles[:WARMUP]:
                model(**r)
            times = []
            for r in singles:
                t = time.perf_counter()
                model(**r)
                times.append(time.perf_counter() - t)
            batches = inputs.batches()
            if batches:
                model(**batches[0])
            t = time.perf_counter()
            for b in batches:
                model(**b)
            elapsed = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    ms = np.array(times) * 1000
    n = sum(len(b["input_ids"]) for b in batches)
    return Speed(
        float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), n / elapsed if n else float("nan"), threads
    )
