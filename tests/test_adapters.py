"""The timm and torchvision adapters and the ViT, against timm and torchvision themselves.

Run by ``tox -e adapters`` (torch 2.14.1, torchvision 0.29.1, timm 1.0.31),
where a missing timm or torchvision is an error, not a skip.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import backbone
from backbone import (
    TimmBackbone,
    TorchvisionBackbone,
    check_backbone,
    from_timm,
    from_torchvision,
    vit_base_patch16_224,
    vit_small_patch16_224,
    vit_tiny_patch4_32,
    vit_tiny_patch16_224,
)

pytestmark = pytest.mark.timm

ROOT = Path(__file__).resolve().parents[1]


# Imported when a test runs, so that collecting this file never needs them.
def _timm():  # type: ignore[no-untyped-def]
    import timm

    return timm


def _tv():  # type: ignore[no-untyped-def]
    import torchvision

    return torchvision


def assert_passes(results: list[backbone.RuleResult]) -> None:
    """Every rule holds; an adapted model offers no set_return_prerelu, so that rule alone is not verified."""
    assert {r.rule: r.status for r in results if r.status != "pass"} == {backbone.CONTRACT_RULES[-1]: "skip"}


# --- the reference ViT against timm's -----------------------------------------

VITS: list[tuple[Callable[[int], backbone.VisionTransformer], str, dict[str, int], int]] = [
    (vit_tiny_patch16_224, "vit_tiny_patch16_224", {}, 224),
    (vit_tiny_patch4_32, "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, 32),
]


@pytest.mark.parametrize(("ours", "name", "kwargs", "size"), VITS, ids=["tiny-224", "tiny-32"])
def test_a_timm_vit_checkpoint_gives_the_same_outputs_for_everything(ours, name, kwargs, size) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    reference = _timm().create_model(name, pretrained=False, num_classes=7, **kwargs).eval()
    net = ours(7).eval()
    net.load_state_dict(reference.state_dict(), strict=True)
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in reference.named_parameters()]
    x = torch.randn(2, 3, size, size)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    with torch.no_grad():
        close(net(x), reference(x))
        close(net(x, returnt="features"), reference.forward_head(reference.forward_features(x), pre_logits=True))
        logits, features = net(x, returnt="both")
        close(logits, reference(x))
        close(features, reference.forward_head(reference.forward_features(x), pre_logits=True))
        full_logits, stages = net(x, returnt="full")
        _, reference_stages = reference.forward_intermediates(x)
        close(full_logits, reference(x))
        assert len(stages) == len(reference_stages) == 12
        for a, b in zip(stages, reference_stages, strict=True):
            close(a, b)
        close(net.forward_features(x), reference.forward_features(x))
        tokens = reference.forward_features(x)
        close(net.forward_head(tokens), reference.forward_head(tokens))
        close(net.forward_head(tokens, pre_logits=True), reference.forward_head(tokens, pre_logits=True))
        for options in (
            {"indices": 3},
            {"indices": [0, -1], "norm": True},
            {"indices": [2], "stop_early": True, "output_fmt": "NLC"},
            {"indices": 2, "return_prefix_tokens": True},
            {"intermediates_only": True},
        ):
            ours_out = net.forward_intermediates(x, **options)
            reference_out = reference.forward_intermediates(x, **options)
            torch.testing.assert_close(ours_out, reference_out, rtol=1e-5, atol=1e-5)
    assert net.feature_info == [{**info} for info in reference.feature_info]


@pytest.mark.parametrize(
    ("ours", "name"),
    [
        (vit_tiny_patch16_224, "vit_tiny_patch16_224"),
        (vit_small_patch16_224, "vit_small_patch16_224"),
        (vit_base_patch16_224, "vit_base_patch16_224"),
    ],
)
def test_every_vit_has_timms_state_dict_keys_and_shapes(ours, name) -> None:  # type: ignore[no-untyped-def]
    reference = _timm().create_model(name, pretrained=False, num_classes=10).state_dict()
    mine = ours(10).state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in reference.items()}


# --- adapters -----------------------------------------------------------------

TIMM_MODELS = [
    ("resnet18", {}, 64),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32),
    ("convnext_atto", {}, 64),
    ("efficientnet_b0", {}, 64),
    ("mobilenetv3_small_050", {}, 64),
]


@pytest.mark.parametrize(("name", "kwargs", "size"), TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_a_timm_model_becomes_a_backbone_that_passes_the_checker(name: str, kwargs: dict[str, int], size: int) -> None:
    torch.manual_seed(0)
    model = _timm().create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    net = from_timm(model)
    assert isinstance(net, TimmBackbone) and isinstance(net, backbone.MammothBackbone)
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]  # shared, same order
    x = torch.randn(2, 3, size, size)
    assert_passes(check_backbone(net, x))
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
        final = model.forward_features(x)
        assert torch.equal(net.forward_features(x), final)
        assert torch.equal(net(x, returnt="features"), model.forward_head(final, pre_logits=True))
        logits, stages = net(x, returnt="full")
        _, expected = model.forward_intermediates(x)
        assert torch.equal(logits, model(x)) and len(stages) == len(expected) == len(net.feature_info)
        assert all(torch.equal(a, b) for a, b in zip(stages, expected, strict=True))
        last = net.forward_intermediates(x, indices=1, intermediates_only=True)
        assert torch.equal(last[0], expected[-1])
    assert net.num_classes == 5 and net.num_features == net.feature_dim
    assert torch.equal(net.get_params(), torch.nn.utils.parameters_to_vector(model.parameters()))


def test_a_plain_timm_or_torchvision_model_is_told_which_adapter_to_use() -> None:
    x = torch.randn(2, 3, 32, 32)
    plain = {
        "from_timm": _timm().create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5),
        "from_torchvision": build_tv("vit"),
    }
    for adapter, model in plain.items():
        with pytest.raises(backbone.ContractError) as info:
            check_backbone(model, x)
        assert str(info.value).endswith(f"wrap it with backbone.{adapter}(model) and check that")
        assert "plain" not in str(info.value).split(adapter)[1]  # said once, at the end
    # A ViT in another layout (torchvision's) is told to name its layers; timm's takes blocks= and sites=.
    with pytest.raises(
        TypeError, match=r"add_lora: VisionTransformer has no ViT blocks in timm's layout; pass target_modules"
    ):
        backbone.add_lora(plain["from_torchvision"], 2)
    assert len(backbone.add_lora(from_timm(plain["from_timm"]), 2, sites=["qkv"])) == 12


def build_tv(name: str) -> nn.Module:
    tv = _tv()
    if name == "vit":
        return tv.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
        )
    return tv.models.get_model(name, weights=None, num_classes=5)


TV_MODELS = [
    ("resnet18", 64, [64, 64, 128, 256, 512]),
    ("resnext50_32x4d", 64, [64, 256, 512, 1024, 2048]),
    ("vit", 32, [32, 32, 32]),
    ("convnext_tiny", 64, [96, 192, 384, 768]),
    ("efficientnet_b0", 64, [16, 24, 40, 112, 320]),
    ("mobilenet_v2", 64, [16, 24, 32, 96, 320]),
    ("mobilenet_v3_small", 64, [16, 16, 24, 48, 96]),
]


@pytest.mark.parametrize(("name", "size", "channels"), TV_MODELS, ids=[m[0] for m in TV_MODELS])
def test_a_torchvision_model_becomes_a_backbone_that_passes_the_checker(
    name: str, size: int, channels: list[int]
) -> None:
    torch.manual_seed(0)
    model = build_tv(name).eval()
    net = from_torchvision(model)
    assert isinstance(net, TorchvisionBackbone)
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]
    assert [info["num_chs"] for info in net.feature_info] == channels
    x = torch.randn(2, 3, size, size)
    assert_passes(check_backbone(net, x))
    with torch.no_grad():
        assert torch.equal(net(x), model(x))  # the model's own forward, split in two
        logits, stages = net(x, returnt="full")
        assert torch.equal(logits, model(x))
        assert [s.shape[1] for s in stages] == channels
        assert all(s.shape[-1] * info["reduction"] == size for s, info in zip(stages, net.feature_info, strict=True))
    assert net.num_classes == 5


def test_a_torchvision_vit_gives_blocks_as_timm_does() -> None:
    net = from_torchvision(build_tv("vit")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = net.forward_intermediates(x)
        tokens = net.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        stopped, first = net.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NLC")
    assert final.shape == (2, 17, 32) and [m.shape for m in maps] == [(2, 32, 4, 4)] * 3
    assert [t.shape for t in tokens] == [(2, 16, 32)] * 3
    assert torch.equal(maps[1], tokens[1].reshape(2, 4, 4, 32).permute(0, 3, 1, 2))
    assert torch.equal(first[0], tokens[0]) and stopped.shape == (2, 17, 32)


def test_reset_classifier_reaches_the_wrapped_model() -> None:
    tv_net = from_torchvision(build_tv("mobilenet_v3_small"))
    tv_net.reset_classifier(11)
    assert tv_net.model.classifier[-1].out_features == 11 and tv_net.num_classes == 11
    assert tv_net(torch.randn(1, 3, 64, 64)).shape == (1, 11)
    timm_net = from_timm("resnet18", num_classes=3)
    timm_net.reset_classifier(4)
    assert timm_net.model.fc.out_features == 4 and timm_net(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_weights_come_from_a_local_checkpoint(tmp_path: Path) -> None:
    source = _timm().create_model("resnet18", pretrained=False, num_classes=3)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    net = from_timm("resnet18", num_classes=3, checkpoint=path)
    assert torch.equal(net.get_params(), backbone.get_params(source))
    tv_source = build_tv("resnet18")
    net = from_torchvision("resnet18", num_classes=5, checkpoint=tv_source.state_dict())
    assert torch.equal(net.get_params(), backbone.get_params(tv_source))


def test_nothing_is_downloaded() -> None:
    with pytest.raises(ValueError, match="never downloads"):
        from_timm("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="never downloads"):
        from_torchvision("resnet18", weights="DEFAULT")


def test_an_unsupported_torchvision_family_is_named() -> None:
    with pytest.raises(TypeError, match=r"supports torchvision's ResNet, .* got AlexNet"):
        from_torchvision(_tv().models.alexnet())


def test_the_docs_page_examples_run() -> None:
    """Every python code block of docs/timm.rst runs, in order, in one namespace."""
    page = (ROOT / "docs" / "timm.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", page)
    assert blocks
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile("\n".join(line[4:] for line in block.splitlines()), "docs/timm.rst", "exec"), namespace)


@pytest.mark.parametrize(
    "make", [lambda: from_timm("resnet18", num_classes=3), lambda: from_torchvision("resnet18", num_classes=3)]
)
def test_adapted_models_grow_like_the_reference_backbones(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(2, 3, 64, 64)
    weight = net.get_classifier().weight
    with torch.no_grad():
        before = net(x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.grow_classifier(5, optimizer=optimizer)
    with torch.no_grad():
        after = net(x)
    assert after.shape == (2, 5) and net.num_classes == 5 and net.get_classifier().weight is weight
    torch.testing.assert_close(after[:, :3], before, rtol=1e-6, atol=1e-6)


def test_asking_for_no_weights_explicitly_is_accepted() -> None:
    for kwargs in ({"pretrained": False}, {"pretrained": None}):
        assert from_timm("resnet18", num_classes=3, **kwargs).num_classes == 3
    assert from_torchvision("resnet18", weights=None, num_classes=3).num_classes == 3


@pytest.mark.parametrize("name", ["hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18.a1_in1k"])
def test_a_hub_name_is_refused_before_any_network_call(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match="names a model on the Hugging Face hub, and this package never downloads"):
        from_timm(name)


@pytest.mark.parametrize(
    ("make", "name", "close"),
    [(from_timm, "resnet81", "resnet18"), (from_torchvision, "resnet_18", "resnet18")],
)
def test_an_unknown_name_is_a_value_error_with_close_matches(make, name: str, close: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"unknown \w+ model .*close matches: .*" + close):
        make(name)


def test_a_timm_name_with_a_pretrained_tag_builds_the_architecture() -> None:
    assert from_timm("resnet18.a1_in1k", num_classes=4).num_classes == 4


@pytest.mark.parametrize("name", ["dla34", "dpn68"])
def test_a_model_whose_classifier_is_a_1x1_convolution_passes_the_checker(name: str) -> None:
    net = from_timm(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    assert all(r.passed for r in check_backbone(net, x))
    with torch.no_grad():
        logits, features = net(x, returnt="both")
        torch.testing.assert_close(net.classifier(features), logits)
        torch.testing.assert_close(logits, net.model(x))
    assert isinstance(net.get_classifier(), nn.Conv2d)  # timm's meaning kept


def test_a_distilled_two_head_model_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"has 2 classifier heads .* use the model without distillation"):
        from_timm("deit_tiny_distilled_patch16_224", num_classes=5)


# --- per-example gradients and the Fisher on adapted models ---------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: backbone.from_timm("resnet10t", num_classes=3),
        lambda: backbone.from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3),
        lambda: backbone.from_torchvision("resnet18", num_classes=3),
    ],
    ids=["timm-resnet10t", "timm-vit", "torchvision-resnet18"],
)
def test_per_sample_grads_of_an_adapted_model_equal_the_per_example_loop(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    net = make().eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    rows = backbone.per_sample_grads(net, nn.functional.cross_entropy, x, y, select="trainable")
    for i in range(2):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        expected = backbone.get_grads(net, select="trainable")
        assert float((rows[i] - expected).abs().max()) <= 1e-6 * float(expected.abs().max())
    fisher = backbone.fisher_diagonal(net, [(x, y)], select="no_classifier")
    assert fisher.shape == (backbone.flat_layout(net, select="no_classifier").numel,) and bool((fisher >= 0).all())


# --- tuning a timm ViT, against the reference ViT and peft ------------------------------------------------------


def timm_and_ours() -> tuple[nn.Module, backbone.VisionTransformer]:
    """A small timm ViT and the package's ViT with the same weights, in float64 so that differences are rounding."""
    torch.manual_seed(0)
    theirs = _timm().create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=3
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    ours = backbone.VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=192, depth=3, num_heads=3)
    ours.load_state_dict(theirs.state_dict())
    return theirs.double().eval(), ours.double().eval()


def g(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.3


CALLS = {
    "prompts": {"prompts": {0: g(2, 3, 192, seed=1), 2: g(2, 192, seed=2)}},
    "prompts added": {"prompts": {0: g(2, 3, 192, seed=1), 1: g(2, 192, seed=2)}, "prompt_mode": "add"},
    "prompt function": {"prompts": {1: lambda t: t[:, -3:] * 0.5}},
    "prefixes": {"prefixes": {0: g(2, 2, 4, 192, seed=3), 2: g(2, 1, 192, seed=4)}},
    "values": {"values": {1: g(2, 192, seed=5)}},
    "AB": {"AB": {0: {"qkv": {"A": g(2, 192, seed=6), "B": g(576, 2, seed=7)}}, 2: {"fc1": g(768, 192, seed=8)}}},
}


@pytest.mark.parametrize("case", list(CALLS))
def test_a_timm_vit_takes_every_call_time_input_as_the_reference_vit_does(case: str) -> None:
    theirs, ours = timm_and_ours()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    kwargs = CALLS[case]
    expected = ours.forward_features(x, **kwargs)
    with torch.no_grad(), backbone.call_inputs(theirs, **kwargs):
        got = theirs.forward_features(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    wrapped = from_timm(theirs)
    features = wrapped(x, returnt="features", **kwargs)
    torch.testing.assert_close(features, ours(x, returnt="features", **kwargs), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(theirs.forward_features(x), ours.forward_features(x), rtol=1e-10, atol=1e-10)


def test_hooks_attached_by_site_on_a_timm_vit_match_the_reference_vit() -> None:
    theirs, ours = timm_and_ours()
    wrapped = from_timm(theirs)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    made = [
        backbone.add_lora(wrapped, 2, sites=["qkv", "fc2"]),
        backbone.add_ssf(wrapped, sites=["norm1", "proj"], blocks=[1, 2]),
    ]
    mine = [
        backbone.add_lora(ours, 2, sites=["qkv", "fc2"]),
        backbone.add_ssf(ours, sites=["norm1", "proj"], blocks=[1, 2]),
    ]
    for group_theirs, group_ours in zip(made, mine, strict=True):
        for a, b in zip(group_theirs, group_ours, strict=True):
            with torch.no_grad():
                for p, q in zip(a.parameters(), b.parameters(), strict=True):
                    p.normal_(0, 0.3)
                    q.copy_(p)
    torch.testing.assert_close(wrapped(x), ours(x), rtol=1e-10, atol=1e-10)
    assert "model.blocks.0.attn.qkv.tuning.lora.A" in wrapped.state_dict()
    assert sorted(k for k in theirs.state_dict() if ".tuning." not in k) == sorted(
        _timm().create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5).state_dict()
    )
    assert backbone.merge_lora(wrapped) == 6
    torch.testing.assert_close(wrapped(x), ours(x), rtol=1e-9, atol=1e-9)
    assert backbone.unmerge_lora(wrapped) == 6
    backbone.remove_tuning(wrapped)
    torch.testing.assert_close(theirs.forward_features(x), timm_and_ours()[0].forward_features(x))


def test_an_attached_lora_is_peft_s_lora_with_the_same_factors() -> None:
    peft = pytest.importorskip("peft") if not _require_peft() else __import__("peft")
    theirs, _ = timm_and_ours()
    twin = copy.deepcopy(theirs)
    config = peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["qkv", "fc1"], lora_dropout=0.0, init_lora_weights=False
    )
    peft_model = peft.get_peft_model(twin, config)
    loras = backbone.add_lora(theirs, 3, target_modules=["qkv", "fc1"], alpha=6.0)
    peft_layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(peft_layers) == len(loras) == 6
    with torch.no_grad():
        for ours_lora, layer in zip(loras, peft_layers, strict=True):
            ours_lora.A.copy_(layer.lora_A["default"].weight)
            ours_lora.B.copy_(layer.lora_B["default"].weight)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out_ours, out_peft = theirs(x), peft_model(x)
    torch.testing.assert_close(out_ours, out_peft, rtol=1e-10, atol=1e-10)
    out_ours.square().sum().backward()
    out_peft.square().sum().backward()
    for ours_lora, layer in zip(loras, peft_layers, strict=True):
        torch.testing.assert_close(ours_lora.A.grad, layer.lora_A["default"].weight.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(ours_lora.B.grad, layer.lora_B["default"].weight.grad, rtol=1e-9, atol=1e-10)


def _require_peft() -> bool:
    """In tox -e adapters peft is installed, and a missing one is an error, not a skip."""
    import os

    return os.environ.get("BACKBONE_REQUIRE_TIMM") == "1"
