"""timm's protocol on the base class and the reference backbones: the same names with the same meanings."""

from __future__ import annotations

import pytest
import torch
from nets import ConvNet, TinyNet
from torch import nn

import backbone
from backbone import MNISTMLP, MammothBackbone, feature_take_indices, resnet18, resnet50


def reference_backbones() -> list[MammothBackbone]:
    torch.manual_seed(0)
    vit = backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=3, num_heads=2)
    return [
        MNISTMLP(12, 5, hidden_size=7),
        resnet18(5, num_filters=4),
        resnet50(5, num_filters=4),
        vit,
        TinyNet(),
        ConvNet(),
    ]


def example_input(net: nn.Module) -> torch.Tensor:
    if isinstance(net, MNISTMLP):
        return torch.randn(3, 12)
    if isinstance(net, TinyNet):
        return torch.randn(3, 4)
    return torch.randn(3, 3, 16, 16)


NETS = reference_backbones()
IDS = [type(net).__name__ + str(i) for i, net in enumerate(NETS)]


@pytest.mark.parametrize(
    ("indices", "expected"),
    [(None, [0, 1, 2, 3, 4]), (1, [4]), (3, [2, 3, 4]), (5, [0, 1, 2, 3, 4]), ([0], [0]), ([-1, 1], [4, 1])],
)
def test_feature_take_indices_means_what_timm_means(indices: object, expected: list[int]) -> None:
    assert feature_take_indices(5, indices) == (expected, max(expected))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("indices", "error", "message"),
    [
        (0, ValueError, "from 1 to 5, got 0"),
        (6, ValueError, "from 1 to 5, got 6"),
        ([5], ValueError, "from -5 to 4, got 5"),
        ([-6], ValueError, "from -5 to 4, got -6"),
        ([], ValueError, "at least one stage"),
        ("1", TypeError, "got str"),
        ([1.0], TypeError, "must be ints"),
        (True, TypeError, "got bool"),
    ],
)
def test_feature_take_indices_rejects(indices: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        feature_take_indices(5, indices)  # type: ignore[arg-type]


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_returnt_is_built_on_the_protocol(net: MammothBackbone) -> None:
    net.eval()
    x = example_input(net)
    final = net.forward_features(x)
    features = net.forward_head(final, pre_logits=True)
    assert torch.equal(net(x, returnt="features"), features)
    assert torch.equal(net(x), net.get_classifier()(features))
    assert torch.equal(net.forward_head(final), net(x))
    logits, stages = net(x, returnt="full")
    assert torch.equal(logits, net(x))
    same_final, same_stages = net.forward_intermediates(x)
    assert torch.equal(same_final, final)
    assert len(stages) == len(same_stages) == len(net.feature_info)
    for a, b in zip(stages, same_stages, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_feature_info_describes_the_stages_without_a_forward(net: MammothBackbone) -> None:
    x = example_input(net)
    _, stages = net.forward_intermediates(x)
    for info, stage in zip(net.feature_info, stages, strict=True):
        assert set(info) >= {"num_chs", "reduction", "module"}
        assert stage.shape[1] == info["num_chs"]
        if stage.dim() == 4:
            assert stage.shape[-1] * info["reduction"] == x.shape[-1]
        assert isinstance(net.get_submodule(info["module"]), nn.Module)


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_forward_intermediates_selects_and_stops_as_timm_does(net: MammothBackbone) -> None:
    net.eval()
    x = example_input(net)
    final, every = net.forward_intermediates(x)
    n = len(every)
    assert [t.shape for t in net.forward_intermediates(x, indices=1)[1]] == [every[-1].shape]
    last_two = net.forward_intermediates(x, indices=min(2, n), intermediates_only=True)
    assert isinstance(last_two, list) and all(torch.equal(a, b) for a, b in zip(last_two, every[-2:], strict=True))
    # A sequence comes back in depth order, each stage once, negative indices from the end.
    picked = net.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
    expected = [every[0]] if n == 1 else [every[0], every[-1]]
    assert len(picked) == len(expected) and all(torch.equal(a, b) for a, b in zip(picked, expected, strict=True))
    # stop_early: the "final" output is the last selected stage's.
    stopped, first = net.forward_intermediates(x, indices=[0], stop_early=True)
    assert torch.equal(first[0], every[0])
    if not isinstance(net, backbone.VisionTransformer):  # a ViT's final output is its normalised tokens (below)
        assert torch.equal(stopped, every[0])
    not_stopped, _ = net.forward_intermediates(x, indices=[0])
    assert torch.equal(not_stopped, final)
    with pytest.raises(ValueError, match="output_fmt must be one of 'NCHW'"):
        net.forward_intermediates(x, output_fmt="NHWC")


def test_the_vit_final_output_is_the_normalised_tokens_even_when_stopping_early() -> None:
    torch.manual_seed(0)
    vit = backbone.VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=3, num_heads=2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        stopped, first = vit.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NLC")
        tokens = vit.patch_embed(x)
        tokens = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], dim=1) + vit.pos_embed
        after_first = vit.blocks[0](tokens)
    torch.testing.assert_close(stopped, vit.norm(after_first))
    torch.testing.assert_close(first[0], after_first[:, 1:])


def test_the_hook_based_default_removes_its_hooks_even_when_stopping_early() -> None:
    net = TinyNet()
    net.forward_intermediates(torch.randn(2, 4), indices=[0], stop_early=True)
    net.forward_intermediates(torch.randn(2, 4))
    assert all(not m._forward_hooks for m in net.modules())


def test_a_backbone_without_feature_info_names_what_to_add() -> None:
    class NoInfo(MammothBackbone):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(4, 2)
            self.feature_dim = 4

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = NoInfo()
    assert net(torch.randn(2, 4)).shape == (2, 2)
    with pytest.raises(NotImplementedError, match="NoInfo has no feature_info"):
        net(torch.randn(2, 4), returnt="full")


def test_forward_head_pools_maps_and_leaves_vectors() -> None:
    net = ConvNet()
    final = torch.randn(2, 6, 3, 5)
    assert torch.allclose(net.forward_head(final, pre_logits=True), final.mean(dim=(2, 3)))
    vectors = torch.randn(2, 6)
    assert torch.equal(net.forward_head(vectors, pre_logits=True), vectors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reset_classifier_as_timm(dtype: torch.dtype) -> None:
    net = resnet18(10, num_filters=4).to(dtype)
    assert net.num_classes == 10 and net.num_features == net.feature_dim == 32
    net.reset_classifier(3)
    classifier = net.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier is net.classifier
    assert (classifier.in_features, classifier.out_features) == (32, 3) and classifier.weight.dtype == dtype
    assert net.num_classes == 3 and net(torch.randn(2, 3, 8, 8, dtype=dtype)).shape == (2, 3)
    net.reset_classifier(0)
    assert net.num_classes == 0 and isinstance(net.get_classifier(), nn.Identity)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    assert torch.equal(net(x), net(x, returnt="features"))


def test_reset_classifier_uses_the_backbones_init() -> None:
    net = MNISTMLP(4, 2, hidden_size=8)
    net.reset_classifier(5)
    assert torch.equal(net.classifier.bias, torch.zeros(5))
    assert net.classifier.weight.abs().max() <= (6 / 13) ** 0.5


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_reset_classifier_rejects_and_keeps_the_old_one(value: object, error: type[Exception]) -> None:
    net = TinyNet()
    old = net.classifier
    with pytest.raises(error, match="num_classes"):
        net.reset_classifier(value)  # type: ignore[arg-type]
    assert net.classifier is old


def test_num_features_is_settable_as_in_timm_models() -> None:
    net = TinyNet()
    net.num_features = 9
    assert net.feature_dim == 9


def test_public_names() -> None:
    assert "feature_take_indices" in backbone.__all__
