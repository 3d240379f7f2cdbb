"""Checkpoints that are never half-written: written to a temporary file beside the target, synced, then renamed over
it (the previous checkpoint stays until the new one is complete); and a check that a checkpoint can be read before
a run resumes from it."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from harness.errors import RunFailed

LOW_SPACE_BYTES = 64 << 20  # below this much free space, a failed write is taken to be a full disk


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, Exception):
                raise write_error(path, e) from e
            raise


def write_error(path: Path, e: Exception) -> RunFailed:
    """A checkpoint that could not be written, in words: which file, and whether the disk is full."""
    code = getattr(e, "errno", None)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < LOW_SPACE_BYTES):
        reason = "no space left on the device"
    elif code is not None:
        reason = os.strerror(code)
    else:
        reason = f"the write failed ({str(e).strip().splitlines()[-1][:160]})"
    return RunFailed(
        f"could not write the checkpoint {path}: {reason}; the previous checkpoint, if any, is kept",
        "free some space or point tracking.output_dir at a disk with room, then run the same command again (it "
        "resumes from the last complete checkpoint)",
    )


def unreadable(path: Path) -> Optional[str]:
    """None when the checkpoint at `path` can be read (lazily, through mmap), else what is wrong with it. A sharded
    checkpoint (a folder, trainer.strategy=fsdp) needs its shards' index and its metadata file, readable."""
    try:
        if path.is_dir():
            missing = [n for n in (".metadata", "meta.pt") if not (path / n).is_file()]
            if missing:
                return f"the sharded checkpoint lacks {', '.join(missing)}"
            path = path / "meta.pt"
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return None
    except Exception as e:  # truncated zip, garbage, a pickle the safe loader refuses
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}" if str(e).strip() else type(e).__name__
