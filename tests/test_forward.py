"""The returnt contract of forward, features and the shared dispatch."""

from __future__ import annotations

import pytest
import torch
from nets import MammothStyleNet, TinyNet
from torch import nn
from torch.nn import functional as F

from backbone import RETURN_TYPES, MammothBackbone, check_returnt


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def test_return_types_are_the_documented_four() -> None:
    assert RETURN_TYPES == ("out", "features", "both", "full")


def by_hand(net: TinyNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TinyNet's stages and logits, from its weights alone."""
    h1 = F.relu(x @ net.stage1.weight.T + net.stage1.bias)
    h2 = F.relu(h1 @ net.stage2.weight.T + net.stage2.bias)
    return h1, h2, h2 @ net.classifier.weight.T + net.classifier.bias


def test_out_is_logits(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    out = net(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, by_hand(net, x)[2])
    assert torch.equal(out, net(x, returnt="out"))


def test_features_is_the_classifier_input(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    feats = net(x, returnt="features")
    torch.testing.assert_close(feats, by_hand(net, x)[1])


def test_both_is_logits_then_features(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    both = net(x, returnt="both")
    assert isinstance(both, tuple) and len(both) == 2
    _, features, logits = by_hand(net, x)
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], features)


def test_full_is_logits_then_stage_list(x: torch.Tensor) -> None:
    net = TinyNet().eval()
    full = net(x, returnt="full")
    assert isinstance(full, tuple) and len(full) == 2
    logits, stages = full
    h1, h2, expected = by_hand(net, x)
    torch.testing.assert_close(logits, expected)
    assert isinstance(stages, list) and len(stages) == 2
    torch.testing.assert_close(stages[0], h1)
    torch.testing.assert_close(stages[1], h2)


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
    def test_the_features_method_serves_a_subclass_with_its_own_forward(self) -> None:
        net = MammothStyleNet().eval()
        x = torch.randn(6, 2, 4)
        expected = F.relu(net.fc2(F.relu(net.fc1(x.reshape(6, 8)))))
        torch.testing.assert_close(net.features(x), expected)  # the base class's features() asks its forward

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
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).T

    net = TinyNet()
    net.classifier = Cosine(3, 7)
    assert net.num_classes == 7
    features = net(x, returnt="features")
    assert torch.equal(net(x), Cosine.forward(net.classifier, features))  # the subclass's forward, not Linear's
    net.grow_classifier(9)
    assert type(net.classifier) is Cosine and net.num_classes == 9
    logits = net(x)
    assert logits.abs().max() <= 1 + 1e-6  # still cosine similarities
