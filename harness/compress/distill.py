"""`harness compress <run> --method distill`: a smaller student trained on the task from the source run's model.

The student is the teacher with fewer layers (`--layers`, default half; initialised from the teacher's kept layers,
embeddings and head) or a given model (`--student <name>`, which must share the teacher's tokenizer). It trains with
the source run's data, optimizer and epochs on Hinton's loss (harness/models/distill.py; `--temperature`,
`--alpha`), and is then tested and timed against the teacher like every other variant.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L

from harness.compress.engines import Variant, plain_model, save_dense
from harness.compress.measure import Inputs
from harness.errors import ConfigError
from harness.models.distill import layer_count, parameters, shallow_student


@dataclass
class DistillSpec:
    layers: Optional[int] = None  # student depth (default: half the teacher's)
    student: Optional[str] = None  # or a given model sharing the teacher's tokenizer
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft (teacher) term

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"--temperature {self.temperature:g} is not positive", "e.g. --temperature 2")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha {self.alpha:g} is not between 0 and 1", "e.g. --alpha 0.5")
        if self.layers is not None and self.student:
            raise ConfigError("--layers and --student both given", "give one: a depth, or a student model")

    def label(self) -> str:
        if self.student is not None:
            return self.student.rsplit("/", 1)[-1]
        return f"L{self.layers}" if self.layers is not None else "Lhalf"


def given_student(name: str, teacher: Any, tokenizer: Any) -> Any:
    """The model `name` with a new classification head for the teacher's labels; refused unless it reads the
    teacher's tokens (the batches are tokenized once, for both)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.models.loading import load_pretrained, resolve_model

    resolved = resolve_model(name)
    theirs = load_pretrained(AutoTokenizer.from_pretrained, resolved)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"student {name} does not share the teacher's tokenizer (vocabularies of {len(theirs)} and "
            f"{len(tokenizer)} tokens)",
            "give a student from the teacher's model family, or --layers N for a shallower copy of the teacher",
        )
    labels = teacher.config.id2label
    return load_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        resolved,
        num_labels=len(labels),
        id2label=labels,
        label2id=teacher.config.label2id,
    )


class DistillStudent(L.Callback):
    """Before fitting: the module's model (the source run's, now the teacher) is replaced by the student, and the
    module trains on the distillation loss. At test start the trained student is the variant measured."""

    def __init__(self, spec: DistillSpec, folder: Path, measure: Any, prune: Optional[float] = None):
        self.spec, self.folder, self.measure, self.prune = spec, folder, measure, prune
        self.notes: dict[str, str] = {}

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.measure.source is not None:
            return
        teacher = plain_model(module.model)
        teacher = copy.deepcopy(teacher) if teacher is module.model else teacher
        spec = self.spec
        if self.prune is not None:  # prune-structured: the teacher with neurons, vocabulary rows (and layers) removed
            from transformers import AutoTokenizer

            from harness.compress.structured import build_student

            tokenizer = AutoTokenizer.from_pretrained(module.hparams["model_path"])
            rows = trainer.datamodule.split_set("train")
            student, removed = build_student(teacher, rows, tokenizer, self.prune, spec.layers)
            self.notes.update(removed)
        elif spec.student:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(module.hparams["model_path"])
            student = given_student(spec.student, teacher, tokenizer)
            self.notes["student"] = spec.student
        else:
            _, n = layer_count(teacher)
            student, keep = shallow_student(teacher, spec.layers or max(n // 2, 1))
            self.notes["student"] = f"the teacher's layers {', '.join(map(str, keep))} of {n}"
        student.train()
        module.model = student
        module.distill_from(teacher, spec.temperature, spec.alpha)
        self.measure.source = teacher
        self.notes.update(
            {
                "loss": f"Hinton KD: {spec.alpha:g} x T^2 x KL(teacher/T || student/T) + {1 - spec.alpha:g} x CE, "
                f"T={spec.temperature:g}",
                "student_parameters": str(parameters(student)),
                "teacher_parameters": str(parameters(teacher)),
            }
        )

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        method = "distill" if self.prune is None else "prune-structured"
        if self.measure.source is None:  # no training happened (train=false): nothing was distilled
            raise ConfigError(f"--method {method} trains a student", "leave train at its default (true)")
        save_dense(module.model, self.folder)
        files = sorted(p for p in self.folder.glob("*") if p.suffix in (".safetensors", ".npy"))
        self.measure.variant = Variant(method, module.model, files, self.notes)
        self.measure.inputs = Inputs(module.inputs)

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # timing happens on this machine's CPU in float32, whatever device trained the student
        for m in (self.measure.variant.model, self.measure.source):
            m.float().cpu().eval()
