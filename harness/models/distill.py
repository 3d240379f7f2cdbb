"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"): a student
learns from a teacher's softened output distribution and from the hard labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The T^2 factor keeps the soft term's gradients on the scale of the hard term's when T changes (section 2 of the
paper). `shallow_student` builds a student with fewer layers from the teacher's own weights, the way DistilBERT was
initialised (one layer in two; Sanh et al. 2019).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError

_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")


def hinton_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, soft term, hard term) for logits [batch, classes]."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student.float() / t, -1),
        F.log_softmax(teacher.float() / t, -1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    hard = F.cross_entropy(student.float(), labels)
    return alpha * soft + (1 - alpha) * hard, soft, hard


def layer_count(model: torch.nn.Module) -> tuple[str, int]:
    config = model.config
    for key in _LAYER_KEYS:
        if isinstance(getattr(config, key, None), int):
            return key, getattr(config, key)
    raise ConfigError(
        f"{type(model).__name__}'s config names no layer count ({', '.join(_LAYER_KEYS)})",
        "give the student as a model instead (--student <name>)",
    )


def kept_layers(n: int, layers: int) -> list[int]:
    """`layers` of `n` blocks, spread evenly and keeping the first and the last (12 -> 6: 0 2 4 7 9 11)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, layers).round()})


def shallow_student(teacher: torch.nn.Module, layers: int) -> tuple[torch.nn.Module, list[int]]:
    """A copy of `teacher` keeping `layers` of its transformer blocks (embeddings, pooler and head kept whole);
    returns it and the teacher's indices of the kept blocks. The copy saves and loads as a normal model of the same
    architecture (its config states the new depth)."""
    key, n = layer_count(teacher)
    if not 1 <= layers < n:
        raise ConfigError(
            f"--layers {layers} is not between 1 and {n - 1} (the teacher has {n} layers)",
            f"e.g. --layers {max(n // 2, 1)} (half the teacher's, as DistilBERT)",
        )
    stacks = [
        (name, m) for name, m in teacher.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n and name
    ]
    if len(stacks) != 1:
        raise ConfigError(
            f"cannot tell which module list of {type(teacher).__name__} holds its {n} layers",
            "give the student as a model instead (--student <name>)",
        )
    keep = kept_layers(n, layers)
    student = copy.deepcopy(teacher)
    name = stacks[0][0]
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    blocks = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([blocks[i] for i in keep]))
    for new_index, block in enumerate(getattr(parent, attr)):
        for m in block.modules():  # blocks that know their position (cache indexing) learn the new one
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_index
    setattr(student.config, key, len(keep))
    if hasattr(student.config, "layer_types") and isinstance(student.config.layer_types, list):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    return student, keep


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def teacher_logits(teacher: Any, inputs: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The frozen teacher's logits for a batch (moved to the batch's device on first use)."""
    first = next(teacher.parameters())
    if first.device != device:
        teacher.to(device)
    with torch.no_grad():
        return teacher(**inputs).logits
