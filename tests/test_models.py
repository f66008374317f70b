"""The reference backbones."""

from __future__ import annotations

import pytest
import torch

from backbone import MNISTMLP, MammothBackbone, ResNet, reduced_resnet18, resnet18, resnet34, resnet50


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda: MNISTMLP(784, 10), 89_610),
        (lambda: resnet18(10), 11_173_962),
        (lambda: resnet34(10), 21_282_122),
        (lambda: resnet50(10), 23_520_842),
        (lambda: resnet18(10, num_filters=20), 1_094_750),
        (lambda: reduced_resnet18(10), 1_094_750),
    ],
    ids=["mnistmlp", "resnet18", "resnet34", "resnet50", "resnet18-nf20", "reduced-resnet18"],
)
def test_parameter_counts(factory, expected: int) -> None:  # type: ignore[no-untyped-def]
    assert count(factory()) == expected


@pytest.mark.parametrize(
    ("factory", "channels"),
    [
        (lambda: resnet18(7, num_filters=8), [8, 8, 16, 32, 64]),
        (lambda: resnet34(7, num_filters=8), [8, 8, 16, 32, 64]),
        (lambda: resnet50(7, num_filters=8), [8, 32, 64, 128, 256]),
    ],
    ids=["resnet18", "resnet34", "resnet50"],
)
def test_resnet_every_returnt(factory, channels: list[int]) -> None:  # type: ignore[no-untyped-def]
    net = factory().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)
        features = net(x, returnt="features")
        both = net(x, returnt="both")
        full = net(x, returnt="full")
    assert logits.shape == (3, 7)
    assert features.shape == (3, channels[-1]) and net.feature_dim == channels[-1]
    assert torch.equal(both[0], logits) and torch.equal(both[1], features)
    full_logits, stages = full
    assert torch.equal(full_logits, logits)
    assert [tuple(s.shape) for s in stages] == [
        (3, c, size, size) for c, size in zip(channels, [32, 32, 16, 8, 4], strict=True)
    ]
    assert torch.equal(stages[-1].mean(dim=(2, 3)), features)
    with pytest.raises(ValueError, match="returnt must be one of"):
        net(x, returnt="all")


def test_mnistmlp_every_returnt() -> None:
    net = MNISTMLP(784, 10)
    x = torch.randn(6, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (6, 10)
    features = net(x, returnt="features")
    assert features.shape == (6, 100)
    assert torch.equal(net(x, returnt="both")[1], features)
    out, stages = net(x, returnt="full")
    assert torch.equal(out, logits)
    assert [s.shape for s in stages] == [(6, 100), (6, 100)]
    assert torch.equal(stages[1], features)
    assert torch.equal(net.classifier(features), logits)
    with pytest.raises(ValueError, match="got 'all'"):
        net(x, returnt="all")


def test_mnistmlp_is_xavier_initialised() -> None:
    net = MNISTMLP(784, 10)
    for layer in (net.fc1, net.fc2, net.classifier):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound


def test_resnet_is_a_backbone_with_a_linear_classifier() -> None:
    net = resnet18(10)
    assert isinstance(net, MammothBackbone) and isinstance(net, ResNet)
    assert isinstance(net.classifier, torch.nn.Linear) and net.classifier.in_features == 512


def test_resnet_trains_one_step() -> None:
    torch.manual_seed(0)
    net = resnet18(4, num_filters=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    before = net.get_params().detach()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert torch.equal(net.get_grads(), grads) and grads.abs().sum() > 0
    opt.step()
    torch.testing.assert_close(net.get_params().detach(), before - 0.1 * grads)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MNISTMLP(0, 10), "input_size must be a positive int, got 0"),
        (lambda: MNISTMLP(784, 10, hidden_size=2.5), "hidden_size must be a positive int, got 2.5"),
        (lambda: resnet18(0), "num_classes must be a positive int, got 0"),
        (lambda: resnet18(10, num_filters=-1), "num_filters must be a positive int, got -1"),
        (lambda: ResNet(type(resnet18(1).layer1[0]), [2, 2, 2], 10), r"4 stages, got \[2, 2, 2\]"),
    ],
)
def test_bad_constructor_arguments(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        build()
