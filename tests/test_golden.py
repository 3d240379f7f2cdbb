"""Golden losses: the first steps of a tiny seeded model on fixed real rows. A silent change to data order,
tokenization, initialisation, optimizer or schedule changes these numbers. If a change is intended, update GOLDEN
with the printed values and say why in the commit."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from transformers import AutoTokenizer

from harness.config import resolve_run_config
from harness.data.sources import load_task_data
from harness.families import get_family
from harness.families.registry import get_task
from harness.models.loading import resolve_model

GOLDEN = [0.694458, 0.693561, 0.696045, 0.695685, 0.692011, 0.693801, 0.692275, 0.692625]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_golden_losses(data_dir, tiny_model):
    task = get_task("imdb")
    cfg = resolve_run_config(
        task,
        [
            "profile=quick",
            f"data.data_dir={data_dir}",
            f"model.name={tiny_model}",
            "data.train_size=128",
            "data.validation_size=32",
            "data.test_size=32",
            "data.max_length=64",
            "data.batch_size=16",
            "optim.lr=1e-3",
            "trainer.precision=32-true",
            "seed=1234",
        ],
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    family = get_family(task.family)
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    dm = family.build_datamodule(cfg, task, data, tok)
    dm.setup()
    module = family.build_module(cfg, task, resolve_model(str(tiny_model)))
    losses = Losses()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        precision="32-true",
        logger=False,
        callbacks=[losses],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=dm)
    print("losses:", [round(v, 6) for v in losses.values])
    assert losses.values == pytest.approx(GOLDEN, abs=2e-5)
