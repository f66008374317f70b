"""check_backbone: every rule, every reference backbone, and nothing changed."""

from __future__ import annotations

import broken
import pytest
import torch
from nets import ConvNet, MammothStyleNet, TinyNet

from backbone import ContractError, RuleResult, check_backbone, get_backbone, list_backbones, registered

RULES = [
    "returnt='out' gives logits [B, C], the default",
    "returnt='features' gives features [B, D]",
    "returnt='both' gives (logits, features) that agree",
    "returnt='full' gives (logits, [stage outputs])",
    "features(x) equals returnt='features'",
    "an unknown returnt raises ValueError",
    "classifier(features) gives the logits",
    "feature_dim equals D",
    "set_params(get_params()) round-trips",
    "set_grads(get_grads()) round-trips",
    "to(torch.float64) converts the backbone",
]


def failures(net: torch.nn.Module, x: torch.Tensor | None = None) -> dict[str, str]:
    x = torch.randn(3, 4) if x is None else x
    with pytest.raises(ContractError) as info:
        check_backbone(net, x)
    assert isinstance(info.value, AssertionError)
    return {r.rule: r.detail for r in info.value.results if r.status == "fail"}


@pytest.mark.parametrize("name", ["mnistmlp", "reduced-resnet18", "resnet18", "resnet34", "resnet50"])
def test_every_reference_backbone_passes(name: str) -> None:
    entry = registered(name)
    net = get_backbone(name, **entry.example_kwargs)
    assert entry.example_input_shape is not None
    results = check_backbone(net, torch.randn(2, *entry.example_input_shape))
    assert [r.rule for r in results] == RULES
    assert all(r.status == "pass" for r in results)


def test_mammoth_style_subclass_passes() -> None:
    results = check_backbone(MammothStyleNet(), torch.randn(3, 8))
    assert all(r.status == "pass" for r in results)


@pytest.mark.parametrize(
    ("net", "rule", "detail"),
    [
        (broken.DefaultNotOut(), RULES[0], "the default returnt and returnt='out'"),
        (broken.FeaturesNot2D(), RULES[1], "should be 2-D, got shape (3, 3, 1)"),
        (broken.BothSwapped(), RULES[2], "its logits and returnt='out'"),
        (broken.FullIsLogits(), RULES[3], "should be a tuple (logits, [stage outputs]), got Tensor of shape (3, 2)"),
        (broken.FeaturesMethodDiffers(), RULES[4], "values differ"),
        (broken.AcceptsAnyReturnt(), RULES[5], "returned Tensor of shape (3, 2) instead of raising ValueError"),
        (broken.AssertsOnReturnt(), RULES[5], "raised AssertionError instead of ValueError"),
        (broken.ClassifierNotHead(), RULES[6], "classifier(features) and the logits"),
        (broken.WrongFeatureDim(), RULES[7], "feature_dim is 99 but the features have D = 3"),
        (broken.SetParamsIgnored(), RULES[8], "get_params() after set_params(v)"),
        (broken.SetParamsHalfWay(), RULES[8], "raised RuntimeError: broke half-way"),
        (broken.SetGradsIgnored(), RULES[9], "get_grads() after set_grads(v)"),
        (broken.ToIgnoresDtype(), RULES[10], "parameters not converted to float64"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else None,
)
def test_each_broken_rule_is_reported(net: torch.nn.Module, rule: str, detail: str) -> None:
    failed = failures(net)
    # Features that are not [B, D] also break every rule that uses them.
    cascade = {RULES[1]: [RULES[2], RULES[4], RULES[6], RULES[7]]}.get(rule, [])
    assert list(failed) == sorted([rule, *cascade], key=RULES.index)
    assert detail in failed[rule]


def test_every_broken_rule_is_listed_not_only_the_first() -> None:
    class ManyBroken(broken.AcceptsAnyReturnt, broken.WrongFeatureDim, broken.SetGradsIgnored):
        pass

    with pytest.raises(ContractError) as info:
        check_backbone(ManyBroken(), torch.randn(3, 4))
    message = str(info.value)
    assert message.startswith("3 of 11 rules broken:")
    for rule in (RULES[5], RULES[7], RULES[9]):
        assert rule in message
    assert len(info.value.results) == 11


def test_a_plain_module_fails_every_returnt_rule() -> None:
    failed = failures(broken.NotABackbone())
    assert RULES[0] in failed and "unexpected keyword argument 'returnt'" in failed[RULES[0]]
    assert RULES[8] in failed and "no get_params() method" in failed[RULES[8]]


def test_missing_classifier_and_feature_dim_are_skipped_not_failed() -> None:
    class Bare(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.head = self.classifier
            del self.classifier
            del self.feature_dim

        def forward_head(self, features: torch.Tensor) -> torch.Tensor:
            return self.head(features)  # type: ignore[no-any-return]

    net = Bare()
    results = {r.rule: r for r in check_backbone(net, torch.randn(3, 4))}
    assert results[RULES[6]].status == "skip" and "no classifier" in results[RULES[6]].detail
    assert results[RULES[7]].status == "skip" and "no feature_dim" in results[RULES[7]].detail
    assert results[RULES[6]].passed


def state(net: torch.nn.Module) -> dict[str, object]:
    return {
        "modes": [m.training for m in net.modules()],
        "params": [(p, p.dtype, p.detach().clone()) for p in net.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in net.parameters()],
        "buffers": [(b, b.clone()) for b in net.buffers()],
    }


def assert_same_state(net: torch.nn.Module, before: dict[str, object]) -> None:
    after = state(net)
    assert after["modes"] == before["modes"]
    for (p0, d0, v0), (p1, d1, v1) in zip(before["params"], after["params"], strict=True):  # type: ignore[call-overload]
        assert p0 is p1 and d0 == d1 and torch.equal(v0, v1)
    for (g0, v0), (g1, v1) in zip(before["grads"], after["grads"], strict=True):  # type: ignore[call-overload]
        assert g0 is g1
        assert (v0 is None and v1 is None) or torch.equal(v0, v1)
    for (b0, v0), (b1, v1) in zip(before["buffers"], after["buffers"], strict=True):  # type: ignore[call-overload]
        assert b0 is b1 and torch.equal(v0, v1)


@pytest.mark.parametrize("with_grads", [False, True])
def test_checker_leaves_the_network_as_found(with_grads: bool) -> None:
    net = ConvNet()
    net.train()
    net.bn.eval()  # a mixed mode must come back mixed
    if with_grads:
        net(torch.randn(2, 3, 8, 8)).sum().backward()
    before = state(net)
    check_backbone(net, torch.randn(2, 3, 8, 8))
    assert_same_state(net, before)
    assert net.training and not net.bn.training


def test_checker_leaves_a_broken_network_as_found() -> None:
    net = broken.SetParamsHalfWay()
    before = state(net)
    failures(net)
    assert_same_state(net, before)


def test_checker_input_errors() -> None:
    with pytest.raises(TypeError, match=r"net must be a torch\.nn\.Module, got str"):
        check_backbone("resnet18", torch.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"example_input must be a torch\.Tensor, got list"):
        check_backbone(TinyNet(), [[0.0] * 4])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"non-empty batch dimension, got shape \(0, 4\)"):
        check_backbone(TinyNet(), torch.zeros(0, 4))


def test_rule_result_passed() -> None:
    assert RuleResult("r", "pass").passed and RuleResult("r", "skip").passed
    assert not RuleResult("r", "fail", "why").passed


def test_registry_has_no_leftovers_from_doctests() -> None:
    assert "tiny-mlp" not in list_backbones() and "scratch" not in list_backbones()
