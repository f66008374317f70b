"""xavier and num_flat_features."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backbone import num_flat_features, xavier


class MyLinear(nn.Linear):
    pass


def test_xavier_initialises_linear_layers_and_zeroes_bias() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(300, 200)
    with torch.no_grad():
        layer.bias.fill_(3.0)
    layer.apply(xavier)
    bound = math.sqrt(6.0 / (300 + 200))
    assert torch.equal(layer.bias, torch.zeros(200))
    assert layer.weight.abs().max() <= bound
    # A uniform on [-a, a] has standard deviation a / sqrt(3).
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound


def test_xavier_reaches_linear_subclasses_and_leaves_other_modules() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(MyLinear(10, 10, bias=False), nn.Conv2d(1, 1, 3), nn.BatchNorm1d(4))
    conv_before = [p.clone() for p in net[1].parameters()]
    norm_before = [p.clone() for p in net[2].parameters()]
    net[0].weight.data.fill_(100.0)
    net.apply(xavier)
    assert net[0].weight.abs().max() <= math.sqrt(6.0 / 20)
    assert all(torch.equal(a, b) for a, b in zip(conv_before, net[1].parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(norm_before, net[2].parameters(), strict=True))


def test_xavier_does_not_record_autograd_history() -> None:
    layer = nn.Linear(3, 3)
    xavier(layer)
    assert layer.weight.is_leaf and layer.weight.grad_fn is None


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8, 3, 32, 32), 3072), ((8, 784), 784), ((8,), 1), ((0, 5, 2), 10), ((4, 0), 0)],
)
def test_num_flat_features(shape: tuple[int, ...], expected: int) -> None:
    result = num_flat_features(torch.zeros(shape))
    assert result == expected
    assert type(result) is int


def test_num_flat_features_rejects_0d_and_non_tensors() -> None:
    with pytest.raises(ValueError, match="batch dimension, got a 0-d tensor"):
        num_flat_features(torch.tensor(1.0))
    with pytest.raises(TypeError, match="got list"):
        num_flat_features([1, 2, 3])  # type: ignore[arg-type]
