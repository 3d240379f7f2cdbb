"""Runs the `harness` CLI in this process and sends itself a signal right after a given optimizer step.

    python kill_driver.py <KILL|INT> <step|test> run <task> key=value ...

KILL is a hard crash (no cleanup, the MLflow run stays RUNNING); INT is Ctrl-C; `test` signals during evaluation."""

import os
import signal
import sys

from lightning.pytorch.callbacks import Callback

import harness.run.runner as runner
from harness.cli import main


class SignalAt(Callback):
    def __init__(self, sig: int, step: int):
        self.sig, self.step = sig, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.step == -1:
            os.kill(os.getpid(), self.sig)


if __name__ == "__main__":
    sig = getattr(signal, f"SIG{sys.argv[1]}")
    build = runner.build_trainer

    def with_signal(cfg, logger, state, extra, quiet):
        step = -1 if sys.argv[2] == "test" else int(sys.argv[2])
        return build(cfg, logger, state, [*extra, SignalAt(sig, step)], quiet)

    runner.build_trainer = with_signal
    sys.exit(main(sys.argv[3:]))
