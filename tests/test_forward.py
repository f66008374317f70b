"""The returnt contract of forward, features and the shared dispatch."""

from __future__ import annotations

import pytest
import torch
from nets import MammothStyleNet, TinyNet
from torch import nn

from backbone import RETURN_TYPES, MammothBackbone, check_returnt


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def test_return_types_are_the_documented_four() -> None:
    assert RETURN_TYPES == ("out", "features", "both", "full")


def test_out_is_logits(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    out = net(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (5, 2)
    assert torch.equal(out, net(x, returnt="out"))


def test_features_is_the_classifier_input(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    feats = net(x, returnt="features")
    assert feats.shape == (5, net.feature_dim)
    assert torch.equal(net.classifier(feats), net(x))


def test_both_is_logits_then_features(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    both = net(x, returnt="both")
    assert isinstance(both, tuple) and len(both) == 2
    logits, feats = both
    assert torch.equal(logits, net(x))
    assert torch.equal(feats, net(x, returnt="features"))


def test_full_is_logits_then_stage_list(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    full = net(x, returnt="full")
    assert isinstance(full, tuple) and len(full) == 2
    logits, stages = full
    assert torch.equal(logits, net(x))
    assert isinstance(stages, list) and len(stages) == 2
    assert all(s.shape[0] == 5 for s in stages)
    assert torch.equal(stages[-1], net(x, returnt="features"))


def test_features_method_equals_forward(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    assert torch.equal(net.features(x), net(x, returnt="features"))


def test_features_method_runs_forward_hooks(x: torch.Tensor) -> None:
    net = TinyNet()
    seen = []
    net.register_forward_hook(lambda module, args, kwargs, output: seen.append(kwargs), with_kwargs=True)
    net.features(x)
    assert seen == [{"returnt": "features"}]


@pytest.mark.parametrize("bad", ["all", "logits", "OUT", "", None, 1, ("out",)])
def test_unknown_returnt_is_a_value_error_listing_the_valid_ones(x: torch.Tensor, bad: object) -> None:
    with pytest.raises(ValueError, match="'out', 'features', 'both', 'full'") as info:
        TinyNet()(x, returnt=bad)
    assert repr(bad) in str(info.value)


def test_check_returnt_returns_valid_values() -> None:
    for value in RETURN_TYPES:
        assert check_returnt(value) == value


def test_base_forward_names_the_subclass(x: torch.Tensor) -> None:
    class Headless(MammothBackbone):
        pass

    with pytest.raises(NotImplementedError, match="Headless must implement forward_features"):
        Headless()(x)


def test_missing_classifier_names_the_subclass(x: torch.Tensor) -> None:
    class NoHead(MammothBackbone):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    assert NoHead()(x, returnt="features").shape == (5, 4)
    with pytest.raises(NotImplementedError, match="NoHead has no classifier"):
        NoHead()(x)


def test_overriding_forward_features_is_used_for_out(x: torch.Tensor) -> None:
    calls = []

    class Fast(TinyNet):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            calls.append("features")
            return super().forward_features(x)

    Fast()(x)
    assert calls == ["features"]


class TestMammothStyleSubclass:
    def test_all_four_returnt_values(self) -> None:
        net = MammothStyleNet().eval()
        x = torch.randn(6, 2, 4)
        logits = net(x)
        assert logits.shape == (6, 3)
        assert net(x, returnt="features").shape == (6, 5)
        out, feats = net(x, returnt="both")
        assert torch.equal(out, logits) and torch.equal(feats, net.features(x))
        out, stages = net(x, returnt="full")
        assert torch.equal(out, logits) and len(stages) == 2

    def test_unknown_returnt(self) -> None:
        with pytest.raises(ValueError, match="got 'all'"):
            MammothStyleNet()(torch.randn(2, 8), returnt="all")

    def test_xavier_init_applied(self) -> None:
        net = MammothStyleNet()
        assert torch.equal(net.fc1.bias, torch.zeros(5))

    def test_flat_methods(self) -> None:
        net = MammothStyleNet()
        n = sum(p.numel() for p in net.parameters())
        assert net.get_params().shape == (n,)
        net(torch.randn(2, 8)).sum().backward()
        assert torch.equal(net.get_grads(), torch.cat([p.grad.reshape(-1) for p in net.parameters()]))

    def test_own_to_keeps_device_reporting(self) -> None:
        net = MammothStyleNet()
        assert net.device == torch.device("cpu")
        assert net.to("cpu") is net
        assert net.device == torch.device("cpu")
        net.to(torch.float64)
        assert net.fc1.weight.dtype == torch.float64
        assert net.device == torch.device("cpu")
        assert net(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64


def test_constructor_rejects_unknown_keyword() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        MammothBackbone(depth=3)


def test_device_keyword_is_reported_without_parameters() -> None:
    assert MammothBackbone(device="meta").device == torch.device("meta")


def test_device_follows_parameters_not_assignment() -> None:
    net = TinyNet()
    net.device = "meta"
    assert net.device == torch.device("cpu")
    net.to("meta")
    assert net.device == torch.device("meta")


def test_buffers_only_backbone_reports_buffer_device() -> None:
    net = MammothBackbone()
    net.register_buffer("scale", torch.ones(1, device="meta"))
    assert net.device == torch.device("meta")


def test_module_subclass_of_linear_as_classifier(x: torch.Tensor) -> None:
    class Cosine(nn.Linear):
        pass

    net = TinyNet()
    net.classifier = Cosine(3, 7)
    assert net(x).shape == (5, 7)
