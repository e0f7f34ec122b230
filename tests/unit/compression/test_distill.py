"""Distillation: the loss is the textbook one, the teacher stays frozen, feature matching trains."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.compression._train import TrainSettings
from edgekit.compression.model import accuracy
from edgekit.compression.distill import distill, soft_target_loss
from edgekit.errors import CompressError
from edgekit.models import load_model
from edgekit.models.digits import DigitsCNN


def test_soft_target_loss_is_t_squared_kl() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    T = 4.0
    p_t = torch.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert soft_target_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)
    assert soft_target_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_trains_the_student_and_leaves_the_teacher_alone() -> None:
    spec = load_model("digits-cnn")
    teacher_state = copy.deepcopy(spec.module.state_dict())
    torch.manual_seed(0)
    student = DigitsCNN(width=4)
    before = accuracy(student, spec.eval_set)
    report = distill(student, spec.module, spec.train_set, TrainSettings(epochs=3, lr=3e-3, threads=1),
                     temperature=4.0, alpha=0.7, features={"features.8": "features.8"}, beta=0.5)
    assert accuracy(student, spec.eval_set) > max(0.7, before + 0.5)  # 4-channel student, 3 epochs: ~0.8
    assert all(torch.equal(v, spec.module.state_dict()[k]) for k, v in teacher_state.items())
    assert all(p.requires_grad for p in spec.module.parameters())  # the caller's teacher is not modified
    assert "features.8<-features.8" in report.summary()


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature 0.0 must be > 0"),
    ({"alpha": 1.5}, "alpha 1.5 must be in"),
    ({"features": {"features.42": "features.8"}}, "unknown student layer 'features.42'"),
    ({"features": {"features.8": "classifier.3"}}, "pair layers that both give feature maps"),
])
def test_bad_distillation_settings_are_named(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    spec = load_model("digits-cnn")
    with pytest.raises(CompressError, match=match):
        distill(DigitsCNN(width=4), spec.module, spec.train_set, TrainSettings(epochs=1, threads=1), **kwargs)
