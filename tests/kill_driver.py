"""Runs `harness run` in this process and SIGKILLs it right after a given optimizer step (a real crash: no cleanup,
no MLflow status update). Used by test_resume.py as: python kill_driver.py <task> <step> key=value ..."""

import os
import signal
import sys

from lightning.pytorch.callbacks import Callback

from harness.config import resolve_run_config
from harness.registry import get_task
from harness.runner import run


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    task = get_task(sys.argv[1])
    cfg = resolve_run_config(task, sys.argv[3:])
    run(cfg, task, extra_callbacks=[KillAt(int(sys.argv[2]))])
