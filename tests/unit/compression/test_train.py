"""The shared training loop: data forms, clear errors, and counted (not guessed) model sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.compression._measure import count_macs, count_params
from edgekit.compression._train import TrainSettings, train, train_data_for
from edgekit.errors import CompressError
from edgekit.models import ModelSpec, TrainSet


def _data(n: int = 64) -> TrainSet:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return TrainSet(inputs=(x,), labels=(x[:, 0] > 0).long())


def test_trains_from_a_trainset_and_from_a_dataloader_alike() -> None:
    data = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.inputs[0], data.labels), batch_size=16)
    for source in (data, loader):
        torch.manual_seed(0)
        model = nn.Linear(6, 2)
        train(model, source, TrainSettings(epochs=30, lr=0.05, threads=1))
        with torch.no_grad():
            acc = (model(data.inputs[0]).argmax(1) == data.labels).float().mean().item()
        assert acc > 0.9 and not model.training


def test_threads_are_restored_and_bad_batches_named() -> None:
    before = torch.get_num_threads()
    train(nn.Linear(6, 2), _data(), TrainSettings(epochs=1, threads=1))
    assert torch.get_num_threads() == before
    with pytest.raises(CompressError, match=r"batch 0: expected \(inputs, labels\), got Tensor"):
        train(nn.Linear(6, 2), [torch.zeros(4, 6)], TrainSettings(epochs=1))


def test_a_diverging_loss_stops_with_the_fix() -> None:
    data = _data()
    data.inputs[0][0, 0] = float("nan")
    with pytest.raises(CompressError, match="lower the learning rate"):
        train(nn.Linear(6, 2), data, TrainSettings(epochs=1, batch_size=64))


def test_missing_training_data_is_a_clear_error() -> None:
    spec = ModelSpec(name="mine", module=nn.Linear(6, 2), example_inputs=(torch.zeros(1, 6),))
    with pytest.raises(CompressError, match="model 'mine' brings no training data; pass train_data"):
        train_data_for(spec, None, "distill")


def test_macs_are_counted_from_the_ops() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    # conv: 8 out x 3 in x 9 taps x 16 positions; linear: 128 x 10
    assert count_macs(model, (torch.zeros(1, 3, 4, 4),)) == 8 * 3 * 9 * 16 + 128 * 10
    assert count_params(model) == 8 * 3 * 9 + 8 + 128 * 10 + 10
