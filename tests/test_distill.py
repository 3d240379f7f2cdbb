"""Distillation's pieces: Hinton's loss and a shallower student built from the teacher's own layers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from harness.errors import ConfigError
from harness.models.distill import hinton_loss, kept_layers, shallow_student


def test_hinton_loss_by_hand():
    s = torch.tensor([[2.0, -1.0, 0.5]])
    t = torch.tensor([[1.0, 0.0, -2.0]])
    y = torch.tensor([2])
    T, alpha = 2.0, 0.3
    loss, soft, hard = hinton_loss(s, t, y, T, alpha)
    ps = torch.softmax(s / T, -1)[0]
    pt = torch.softmax(t / T, -1)[0]
    kl = sum(float(pt[i] * math.log(pt[i] / ps[i])) for i in range(3))
    ce = -math.log(float(torch.softmax(s, -1)[0, 2]))
    assert float(soft) == pytest.approx(kl * T * T, rel=1e-5)
    assert float(hard) == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(alpha * kl * T * T + (1 - alpha) * ce, rel=1e-5)
    same, soft0, _ = hinton_loss(t, t, y, T, 1.0)  # a student that matches its teacher has nothing soft to learn
    assert float(soft0) == pytest.approx(0.0, abs=1e-6) and float(same) == pytest.approx(0.0, abs=1e-6)


def test_kept_layers_spread_like_distilbert():
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert kept_layers(6, 3) == [0, 2, 5]
    assert kept_layers(2, 1) == [0]


def test_shallow_student_is_the_teacher_minus_layers_and_reloads(tiny_model, tmp_path):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    student, keep = shallow_student(teacher, 1)
    assert keep == [0] and student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 1 and len(teacher.bert.encoder.layer) == 2
    # the kept layer, the embeddings and the head are the teacher's weights (copies, not shared)
    sd, td = student.state_dict(), teacher.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, td[k]), k
    assert student.classifier.weight.data_ptr() != teacher.classifier.weight.data_ptr()
    student.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    x = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        assert torch.allclose(again(**x).logits, student.eval()(**x).logits, atol=1e-6)
        assert not torch.allclose(student(**x).logits, teacher(**x).logits)
    with pytest.raises(ConfigError, match="--layers 2 is not between 1 and 1"):
        shallow_student(teacher, 2)


def test_compress_reads_the_source_threads_as_logged():
    from harness.commands.compress import source_threads

    # a run on the default thread count logs the param as "null" (this broke `harness compress` on the quick model)
    assert source_threads({"trainer.num_threads": "null"}) is None
    assert source_threads({}) is None and source_threads({"trainer.num_threads": "0"}) is None
    assert source_threads({"trainer.num_threads": "3"}) == 3


def test_variants_of_one_method_are_told_apart():
    from harness.commands.compress import DistillSpec
    from harness.commands.compress import _variant_tags as tags

    assert tags("prune", 0.75, DistillSpec(), {}) == {"sparsity": "0.75"}
    assert tags("distill", 0.5, DistillSpec(layers=3), {}) == {"student_spec": "L3"}
    assert tags("distill", 0.5, DistillSpec(layers=2), {"trainer.max_epochs": 2}) == {"student_spec": "L2-2ep"}
    assert tags("distill", 0.5, DistillSpec(student="org/tiny-bert"), {}) == {"student_spec": "tiny-bert"}
    assert tags("distill", 0.5, DistillSpec(), {}) == {"student_spec": "Lhalf"}  # never "LNone"
    assert tags("onnx-int8", 0.5, DistillSpec(), {}) == {}
