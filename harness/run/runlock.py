"""A folder held by one process at a time: a second identical command stops in one line instead of resuming or
overwriting the first one's checkpoints. The lock is an flock on `<folder>/lock`, so it goes with the process (a
kill -9 frees it too). Light on purpose: `harness run` takes it before importing torch, Lightning or MLflow, so the
second command says so within a second, not after its start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import ConfigError


def hold(folder: Path) -> int:
    """Lock `folder` for this process; the descriptor to close to let it go."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"the same command is already running (pid {holder}) and holds its run folder {folder.resolve()}",
            "wait for it to finish (running this again then resumes or reuses its result), or make this run "
            "differ (another seed=..., or tracking.output_dir=<another folder>)",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def first_process() -> bool:
    """Not one of the processes a DDP launcher or torchrun starts beside the first (they re-run the same command)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def command_folder(cfg: object, task: str) -> Path:
    """Where a command's early lock lives: one folder per task and config as the user gave it (the run's own folder
    is named after the config once devices are resolved, which needs torch)."""
    output_dir = Path(cfg.tracking.output_dir)
    return output_dir / "commands" / task / cfg.identity_hash()  # type: ignore[attr-defined]
