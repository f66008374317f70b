"""What ``check_backbone`` promises, checked exactly: every rule's status and whole detail.

Each backbone here breaks (or deliberately bends) one part of the contract of
docs/checker.rst. The tests compare the status and the complete detail of
*every* rule, not only the broken one, so that a rule which starts failing,
passing or skipping where it should not is caught too. Where a detail embeds
a number (the largest difference between two outputs), the number is
computed independently; where it depends on the checker's own test vector,
only its form is checked.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from nets import TiedFrozenUnused, TinyNet
from torch import Tensor, nn

from backbone import CONTRACT_RULES, MNISTMLP, ContractError, MammothBackbone, RuleResult, check_backbone

RULES = list(CONTRACT_RULES)
(
    OUT,
    HEAD,
    FEATURES,
    BOTH,
    FULL,
    FEATURES_METHOD,
    UNKNOWN,
    CLASSIFIER,
    FEATURE_DIM,
    SET_PARAMS,
    IDENTITY,
    PARAMS_COPIED,
    DIFFERENTIABLE,
    SET_GRADS,
    GRADS_COPIED,
    GRADS_NONE_OR_NOT,
    MISSING_GRADS,
    FLOAT64,
    PRERELU,
) = RULES

NO_PRERELU = ("skip", "the backbone has no set_return_prerelu")
DIFF = r"values differ \(largest difference [-+.e0-9]+\)"

Expected = tuple[str, "str | re.Pattern[str]"]


def batch(rows: int = 3, cols: int = 4, seed: int = 1) -> Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def seeded(net: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh weights from a fixed seed, whatever ran before."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net


def results_of(net: nn.Module, x: Tensor | None = None, **tolerances: float) -> list[RuleResult]:
    """Every rule's result, whether or not the check raised."""
    try:
        results = check_backbone(net, batch() if x is None else x, **tolerances)
    except ContractError as error:
        assert any(r.status == "fail" for r in error.results)
        results = error.results
    else:
        assert all(r.status != "fail" for r in results)
    assert [r.rule for r in results] == RULES
    return results


def differs(what: str) -> re.Pattern[str]:
    """The detail of two outputs that disagree, with any largest difference."""
    return re.compile(re.escape(f"{what}: ") + DIFF)


def largest(a: Tensor, b: Tensor) -> str:
    return f"{(a.double() - b.double()).abs().max().item():.3g}"


def assert_outcome(
    net: nn.Module,
    changed: dict[str, Expected],
    x: Tensor | None = None,
    prerelu: Expected = NO_PRERELU,
    **tolerances: float,
) -> list[RuleResult]:
    """Every rule passes with an empty detail, except those in ``changed`` (and the pre-activation rule)."""
    expected: dict[str, Expected] = {rule: ("pass", "") for rule in RULES}
    expected[PRERELU] = prerelu
    expected.update(changed)
    results = results_of(net, x, **tolerances)
    for result in results:
        status, detail = expected[result.rule]
        assert (result.rule, result.status) == (result.rule, status)
        if isinstance(detail, re.Pattern):
            assert detail.fullmatch(result.detail), (result.rule, result.detail)
        else:
            assert (result.rule, result.detail) == (result.rule, detail)
    return results


class Replacing(TinyNet):
    """TinyNet whose output for some ``returnt`` values (``None``: the default) is replaced."""

    def __init__(self, **replace: Callable[[Any, Tensor], object]) -> None:
        super().__init__()
        self.replace = replace

    def forward(self, x: Tensor, returnt: str | None = None):  # type: ignore[no-untyped-def, override]
        key = "default" if returnt is None else returnt
        result = super().forward(x, "out" if returnt is None else returnt)  # type: ignore[arg-type]
        change = self.replace.get(key)
        return result if change is None else change(result, x)


# --- the input checks ------------------------------------------------------------------------------------------


def test_input_errors_have_their_whole_messages() -> None:
    cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
        (TypeError, "net must be a torch.nn.Module, got str", lambda: check_backbone("resnet18", batch())),  # type: ignore[arg-type]
        (TypeError, "net must be a torch.nn.Module, got NoneType", lambda: check_backbone(None, batch())),  # type: ignore[arg-type]
        (
            TypeError,
            "example_input must be a torch.Tensor, got list",
            lambda: check_backbone(TinyNet(), [[0.0] * 4]),  # type: ignore[arg-type]
        ),
        (
            ValueError,
            "example_input must have a non-empty batch dimension, got shape (0, 4)",
            lambda: check_backbone(TinyNet(), torch.zeros(0, 4)),
        ),
        (
            ValueError,
            "example_input must have a non-empty batch dimension, got shape ()",
            lambda: check_backbone(TinyNet(), torch.tensor(1.0)),
        ),
        (TypeError, "rtol must be a float, got str", lambda: check_backbone(TinyNet(), batch(), rtol="0")),  # type: ignore[arg-type]
        (TypeError, "atol must be a float, got str", lambda: check_backbone(TinyNet(), batch(), atol="0")),  # type: ignore[arg-type]
        (TypeError, "rtol must be a float, got bool", lambda: check_backbone(TinyNet(), batch(), rtol=True)),
        (TypeError, "atol must be a float, got bool", lambda: check_backbone(TinyNet(), batch(), atol=False)),
        (TypeError, "atol must be a float, got NoneType", lambda: check_backbone(TinyNet(), batch(), atol=None)),  # type: ignore[arg-type]
        (
            ValueError,
            "rtol must be a non-negative float, got -1",
            lambda: check_backbone(TinyNet(), batch(), rtol=-1),
        ),
        (
            ValueError,
            "atol must be a non-negative float, got -1e-05",
            lambda: check_backbone(TinyNet(), batch(), atol=-1e-5),
        ),
        (
            ValueError,
            "rtol must be a non-negative float, got nan",
            lambda: check_backbone(TinyNet(), batch(), rtol=float("nan")),
        ),
        (
            ValueError,
            "atol must be a non-negative float, got nan",
            lambda: check_backbone(TinyNet(), batch(), atol=float("nan")),
        ),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind) as info:
            call()
        assert type(info.value) is kind
        assert str(info.value) == message


def test_zero_and_integer_tolerances_are_accepted() -> None:
    net = seeded(TinyNet())
    for tolerances in ({"rtol": 0, "atol": 1}, {"rtol": 1, "atol": 0}, {"rtol": 0.0, "atol": 1e-3}):
        assert_outcome(net, {}, **tolerances)


def test_a_net_is_checked_before_the_input() -> None:
    with pytest.raises(TypeError) as info:
        check_backbone(42, "x")  # type: ignore[arg-type]
    assert str(info.value) == "net must be a torch.nn.Module, got int"


class RefusesWideInput(TinyNet):
    """Refuses an input of the wrong width with a ValueError, as a careful backbone would."""

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if x.shape[-1] != 4:
            raise ValueError(f"expected 4 features, got {x.shape[-1]}")
        return super().forward(x, returnt)  # type: ignore[arg-type]


class RefusesWithTypeError(TinyNet):
    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if x.dtype != torch.float32:
            raise TypeError("float32 only")
        return super().forward(x, returnt)  # type: ignore[arg-type]


def test_an_input_the_backbone_refuses_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError) as info:
        check_backbone(RefusesWideInput(), torch.zeros(2, 5))
    assert type(info.value) is ValueError
    assert str(info.value) == (
        "example_input must be a batch the backbone accepts; RefusesWideInput refused shape (2, 5) "
        "(torch.float32): ValueError: expected 4 features, got 5"
    )
    with pytest.raises(ValueError) as info:
        check_backbone(RefusesWithTypeError(), torch.zeros(2, 4, dtype=torch.float64))
    assert str(info.value) == (
        "example_input must be a batch the backbone accepts; RefusesWithTypeError refused shape (2, 4) "
        "(torch.float64): TypeError: float32 only"
    )


def test_a_refused_input_changes_nothing() -> None:
    net = seeded(RefusesWideInput()).train()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError):
        check_backbone(net, torch.zeros(2, 5))
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(p.grad is None for p in net.parameters())


class FailsOnceWithRuntimeError(TinyNet):
    """Only the first call raises, and not a TypeError or ValueError: the backbone's fault, not the input's."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first call")
        return super().forward(x, returnt)  # type: ignore[arg-type]


def test_another_error_on_the_input_is_left_to_the_rules() -> None:
    assert_outcome(seeded(FailsOnceWithRuntimeError()), {})


# --- ContractError and RuleResult --------------------------------------------------------------------------------


def test_contract_error_message_with_and_without_the_backbone_name() -> None:
    results = [
        RuleResult("a", "pass"),
        RuleResult("b", "fail", "why b"),
        RuleResult("c", "skip", "why not c"),
        RuleResult("d", "fail", "why d"),
    ]
    error = ContractError(results, "Net")
    assert isinstance(error, AssertionError)
    assert str(error) == "Net: 2 of 4 rules broken:\n  - b: why b\n  - d: why d"
    assert error.results is results and error.backbone == "Net"
    plain = ContractError(results)
    assert str(plain) == "2 of 4 rules broken:\n  - b: why b\n  - d: why d"
    assert plain.backbone is None
    assert str(ContractError(results, "")) == "2 of 4 rules broken:\n  - b: why b\n  - d: why d"
    assert plain.args == ("2 of 4 rules broken:\n  - b: why b\n  - d: why d",)


def test_contract_error_from_the_checker_has_the_whole_message() -> None:
    class Lenient(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.feature_dim = 7

        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            if returnt not in ("features", "both", "full"):
                returnt = "out"
            return super().forward(x, returnt)  # type: ignore[arg-type]

    with pytest.raises(ContractError) as info:
        check_backbone(Lenient(), batch())
    assert str(info.value) == (
        f"Lenient: 2 of {len(RULES)} rules broken:\n"
        f"  - {UNKNOWN}: returned Tensor of shape (3, 2) instead of raising ValueError\n"
        f"  - {FEATURE_DIM}: feature_dim is 7 but the features have D = 3"
    )
    assert info.value.backbone == "Lenient"
    assert [r.rule for r in info.value.results] == RULES


def test_rule_result_fields_and_passed() -> None:
    result = RuleResult("r", "skip")
    assert result.detail == "" and result.passed
    assert RuleResult("r", "pass").passed and not RuleResult("r", "fail", "x").passed


def test_a_passing_check_returns_every_result_without_raising() -> None:
    results = check_backbone(seeded(TinyNet()), batch())
    assert [(r.rule, r.status, r.detail) for r in results] == [(rule, "pass", "") for rule in RULES[:-1]] + [
        (PRERELU, *NO_PRERELU)
    ]


# --- rule 1: returnt='out' and the default, and what every other rule says about a bad 'out' ---------------------


def test_an_out_that_is_not_a_tensor_is_described() -> None:
    net = seeded(Replacing(out=lambda result, x: (result, x)))
    bad = "returnt='out' should be a Tensor, got tuple of 2 (Tensor of shape (3, 2), Tensor of shape (3, 4))"
    assert_outcome(
        net,
        {
            OUT: ("fail", bad),
            HEAD: ("fail", bad),
            BOTH: ("fail", bad),
            FULL: ("fail", bad),
            CLASSIFIER: ("fail", bad),
            SET_PARAMS: ("fail", bad),
            SET_GRADS: ("fail", bad),
            FLOAT64: (
                "fail",
                "the float64 logits should be a Tensor, got tuple of 2 (Tensor of shape (3, 2), "
                "Tensor of shape (3, 4))",
            ),
        },
    )


def test_long_sequences_are_described_by_their_first_six_elements() -> None:
    net = seeded(Replacing(default=lambda result, x: [1, 2.0, "a", None, result, [result], 7]))
    described = (
        "the default returnt should be a Tensor, got list of 7 (int, float, str, NoneType, Tensor of shape (3, 2), "
        "list of 1 (Tensor of shape (3, 2)), ...)"
    )
    assert_outcome(net, {OUT: ("fail", described)})
    six = seeded(Replacing(default=lambda result, x: (1, 2, 3, 4, 5, 6)))
    assert_outcome(
        six, {OUT: ("fail", "the default returnt should be a Tensor, got tuple of 6 (int, int, int, int, int, int)")}
    )
    empty = seeded(Replacing(default=lambda result, x: ()))
    assert_outcome(empty, {OUT: ("fail", "the default returnt should be a Tensor, got tuple of 0 ()")})
    none = seeded(Replacing(default=lambda result, x: None))
    assert_outcome(none, {OUT: ("fail", "the default returnt should be a Tensor, got NoneType")})


def test_a_default_with_the_wrong_batch_is_reported() -> None:
    assert_outcome(
        seeded(Replacing(default=lambda result, x: result[:1])),
        {OUT: ("fail", "the default returnt should have batch dimension 3, got shape (1, 2)")},
    )
    assert_outcome(
        seeded(Replacing(default=lambda result, x: result.sum())),
        {OUT: ("fail", "the default returnt should have batch dimension 3, got shape ()")},
    )


def test_the_default_may_have_any_number_of_dimensions_but_must_equal_out() -> None:
    assert_outcome(
        seeded(Replacing(default=lambda result, x: result.unsqueeze(-1))),
        {OUT: ("fail", "the default returnt and returnt='out': shapes differ, (3, 2, 1) and (3, 2)")},
    )
    assert_outcome(
        seeded(Replacing(default=lambda result, x: result + 0.5)),
        {OUT: ("fail", "the default returnt and returnt='out': values differ (largest difference 0.5)")},
    )
    # A batch of one: the batch check must compare the size, not only the number of dimensions.
    assert_outcome(seeded(TinyNet()), {}, x=batch(rows=1))


def test_an_out_that_is_not_2d_or_of_the_wrong_batch_is_reported() -> None:
    three_d = seeded(Replacing(out=lambda result, x: result.unsqueeze(-1)))
    bad = "returnt='out' should be 2-D, got shape (3, 2, 1)"
    assert_outcome(
        three_d,
        {
            OUT: ("fail", bad),
            HEAD: ("fail", bad),
            BOTH: ("fail", bad),
            FULL: ("fail", bad),
            CLASSIFIER: ("fail", bad),
            SET_PARAMS: ("fail", bad),
            SET_GRADS: ("fail", bad),
            FLOAT64: ("fail", bad),
        },
    )


# --- rule 2: returnt='out' is forward_head(forward_features(x)) --------------------------------------------------


class OwnForward(nn.Module):
    """A backbone that writes its own forward, with the whole flat API but none of timm's two methods."""

    def __init__(self, forward_features: object = None, forward_head: object = None) -> None:
        super().__init__()
        self.inner = seeded(TinyNet())
        if forward_features is not None:
            self.forward_features = forward_features
        if forward_head is not None:
            self.forward_head = forward_head

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def]
        return self.inner(x, returnt)

    def features(self, x: Tensor) -> Tensor:
        return self.inner.features(x)

    def get_params(self) -> Tensor:
        return self.inner.get_params()

    def set_params(self, v: Tensor) -> None:
        self.inner.set_params(v)

    def get_grads(self) -> Tensor:
        return self.inner.get_grads()

    def set_grads(self, v: Tensor) -> None:
        self.inner.set_grads(v)


def test_the_head_rule_is_skipped_without_both_methods() -> None:
    skipped = ("skip", "the backbone has no forward_features and forward_head")
    no_classifier = {
        CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
        FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
    }
    assert_outcome(OwnForward(), {HEAD: skipped, **no_classifier})
    only_features = OwnForward(forward_features=lambda x: x)
    assert_outcome(only_features, {HEAD: skipped, **no_classifier})
    only_head = OwnForward(forward_head=lambda x: x)
    assert_outcome(only_head, {HEAD: skipped, **no_classifier})
    not_callable = OwnForward(forward_features=3, forward_head=4)
    assert_outcome(not_callable, {HEAD: skipped, **no_classifier})


def test_the_head_rule_is_skipped_when_forward_features_is_not_implemented() -> None:
    def not_implemented(x: Tensor) -> Tensor:
        raise NotImplementedError("no")

    net = OwnForward(forward_features=not_implemented, forward_head=lambda x: x)
    assert_outcome(
        net,
        {
            HEAD: ("skip", "the backbone writes its own forward and does not implement forward_features"),
            CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
            FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
        },
    )


def test_the_head_rule_compares_with_the_logits() -> None:
    net = OwnForward(forward_features=lambda x: x, forward_head=lambda x: x[:, :2])
    other = {
        CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
        FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
    }
    x = batch()
    logits = net.inner(x)
    assert_outcome(
        net,
        {
            HEAD: (
                "fail",
                f"forward_head(forward_features(x)) and returnt='out': values differ (largest difference "
                f"{largest(x[:, :2], logits)})",
            ),
            **other,
        },
        x=x,
    )
    wrong_batch = OwnForward(forward_features=lambda x: x, forward_head=lambda x: x[:2])
    assert_outcome(
        wrong_batch,
        {HEAD: ("fail", "forward_head(forward_features(x)) should have batch dimension 3, got shape (2, 4)"), **other},
    )
    not_a_tensor = OwnForward(forward_features=lambda x: x, forward_head=lambda x: [x])
    assert_outcome(
        not_a_tensor,
        {
            HEAD: (
                "fail",
                "forward_head(forward_features(x)) should be a Tensor, got list of 1 (Tensor of shape (3, 4))",
            ),
            **other,
        },
    )
    agrees = OwnForward(forward_features=net.inner.forward_features, forward_head=net.inner.forward_head)
    assert_outcome(agrees, other)


def test_the_head_rule_runs_without_autograd_and_on_the_example_input() -> None:
    seen: list[tuple[bool, Tensor]] = []

    def forward_features(x: Tensor) -> Tensor:
        seen.append((torch.is_grad_enabled(), x))
        return net.inner.forward_features(x)

    net = OwnForward(forward_head=lambda x: net.inner.forward_head(x))
    net.forward_features = forward_features
    x = batch()
    assert_outcome(
        net,
        {
            CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
            FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
        },
        x=x,
    )
    assert len(seen) == 1 and not seen[0][0] and torch.equal(seen[0][1], x)


def test_a_head_scaling_its_logits_breaks_the_head_rule_with_the_right_difference() -> None:
    class ScaledHead(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            if returnt == "out":
                return self.classifier(self.forward_features(x)) / 2
            return super().forward(x, returnt)  # type: ignore[arg-type]

    net = seeded(ScaledHead())
    x = batch()
    with torch.no_grad():
        logits = net.classifier(net.forward_features(x))
    half = f"values differ (largest difference {largest(logits, logits / 2)})"
    assert_outcome(
        net,
        {
            HEAD: ("fail", f"forward_head(forward_features(x)) and returnt='out': {half}"),
            BOTH: ("fail", f"its logits and returnt='out': {half}"),
            FULL: ("fail", f"its logits and returnt='out': {half}"),
            CLASSIFIER: ("fail", f"classifier(features) and the logits: {half}"),
            FLOAT64: ("pass", ""),
        },
        x=x,
    )


# --- rules 3 to 6: 'features', 'both', 'full', features(x) ------------------------------------------------------


def test_features_of_the_wrong_kind_are_reported() -> None:
    not_a_tensor = seeded(Replacing(features=lambda result, x: None))
    bad = "returnt='features' should be a Tensor, got NoneType"
    assert_outcome(
        not_a_tensor,
        {
            FEATURES: ("fail", bad),
            BOTH: ("fail", bad),
            FEATURES_METHOD: ("fail", "features(x) should be a Tensor, got NoneType"),
            CLASSIFIER: ("fail", bad),
            FEATURE_DIM: ("fail", bad),
        },
    )
    wrong_batch = seeded(Replacing(features=lambda result, x: result[1:]))
    bad = "returnt='features' should have batch dimension 3, got shape (2, 3)"
    assert_outcome(
        wrong_batch,
        {
            FEATURES: ("fail", bad),
            BOTH: ("fail", bad),
            FEATURES_METHOD: ("fail", "features(x) should have batch dimension 3, got shape (2, 3)"),
            CLASSIFIER: ("fail", bad),
            FEATURE_DIM: ("fail", bad),
        },
    )


def test_both_of_the_wrong_kind_is_reported() -> None:
    cases: list[tuple[Callable[[Any, Tensor], object], str]] = [
        (lambda r, x: r[0], "should be a tuple (logits, features), got Tensor of shape (3, 2)"),
        (
            lambda r, x: list(r),
            "should be a tuple (logits, features), got list of 2 (Tensor of shape (3, 2), Tensor of shape (3, 3))",
        ),
        (
            lambda r, x: (*r, x),
            "should be a tuple (logits, features), got tuple of 3 (Tensor of shape (3, 2), "
            "Tensor of shape (3, 3), Tensor of shape (3, 4))",
        ),
        (lambda r, x: (r[0],), "should be a tuple (logits, features), got tuple of 1 (Tensor of shape (3, 2))"),
        (lambda r, x: (None, r[1]), "its logits should be a Tensor, got NoneType"),
        (lambda r, x: (r[0][:1], r[1]), "its logits should have batch dimension 3, got shape (1, 2)"),
        (lambda r, x: (r[0], "f"), "its features should be a Tensor, got str"),
        (lambda r, x: (r[0], r[1][:2]), "its features should have batch dimension 3, got shape (2, 3)"),
        (
            lambda r, x: (r[0], r[1] * 0 + 0.25),
            "its features and returnt='features': values differ (largest difference {})",
        ),
        (lambda r, x: (r[0] - 2, r[1]), "its logits and returnt='out': values differ (largest difference 2)"),
        (lambda r, x: (r[0].unsqueeze(1), r[1]), "its logits and returnt='out': shapes differ, (3, 1, 2) and (3, 2)"),
    ]
    for change, detail in cases:
        net = seeded(Replacing(both=change))
        if "{}" in detail:
            with torch.no_grad():
                features = net(batch(), "features")
            detail = detail.format(largest(features * 0 + 0.25, features))
        assert_outcome(net, {BOTH: ("fail", detail)})


def test_full_of_the_wrong_kind_is_reported() -> None:
    cases: list[tuple[Callable[[Any, Tensor], object], str]] = [
        (
            lambda r, x: list(r),
            "should be a tuple (logits, [stage outputs]), got list of 2 (Tensor of shape (3, 2), "
            "list of 2 (Tensor of shape (3, 3), Tensor of shape (3, 3)))",
        ),
        (
            lambda r, x: (*r, x),
            "should be a tuple (logits, [stage outputs]), got tuple of 3 (Tensor of shape (3, 2), "
            "list of 2 (Tensor of shape (3, 3), Tensor of shape (3, 3)), Tensor of shape (3, 4))",
        ),
        (lambda r, x: (r[0],), "should be a tuple (logits, [stage outputs]), got tuple of 1 (Tensor of shape (3, 2))"),
        (lambda r, x: ([r[0]], r[1]), "its logits should be a Tensor, got list of 1 (Tensor of shape (3, 2))"),
        (lambda r, x: (r[0][:2], r[1]), "its logits should have batch dimension 3, got shape (2, 2)"),
        (
            lambda r, x: (r[0], tuple(r[1])),
            "its second element should be a list of stage outputs, got tuple of 2 "
            "(Tensor of shape (3, 3), Tensor of shape (3, 3))",
        ),
        (
            lambda r, x: (r[0], r[1][0]),
            "its second element should be a list of stage outputs, got Tensor of shape (3, 3)",
        ),
        (lambda r, x: (r[0], []), "its list of stage outputs is empty"),
        (lambda r, x: (r[0], [r[1][0], None]), "stage 1 should be a Tensor, got NoneType"),
        (lambda r, x: (r[0], [r[1][0][:1], r[1][1]]), "stage 0 should have batch dimension 3, got shape (1, 3)"),
        (
            lambda r, x: (r[0], [r[1][0], r[1][1][:, None][:1]]),
            "stage 1 should have batch dimension 3, got shape (1, 1, 3)",
        ),
        (lambda r, x: (r[0] * 0 + 3, r[1]), "its logits and returnt='out': values differ (largest difference {})"),
    ]
    for change, detail in cases:
        net = seeded(Replacing(full=change))
        if "{}" in detail:
            with torch.no_grad():
                logits = net(batch(), "out")
            detail = detail.format(largest(logits * 0 + 3, logits))
        assert_outcome(net, {FULL: ("fail", detail)})


def test_stages_of_any_shape_with_the_batch_are_accepted() -> None:
    net = seeded(Replacing(full=lambda r, x: (r[0], [x, x[:, :1], x.sum(1)])))
    assert_outcome(net, {})


def test_a_features_method_that_differs_or_is_missing_is_reported() -> None:
    class Shifted(TinyNet):
        def features(self, x: Tensor) -> Tensor:
            return super().features(x) + 0.125

    assert_outcome(
        seeded(Shifted()),
        {FEATURES_METHOD: ("fail", "features(x) and returnt='features': values differ (largest difference 0.125)")},
    )

    class NotCallable(TinyNet):
        features = 3  # type: ignore[assignment]

    assert_outcome(
        seeded(NotCallable()),
        {FEATURES_METHOD: ("fail", "the backbone has no features() method (inherit from MammothBackbone)")},
    )

    class WrongBatch(TinyNet):
        def features(self, x: Tensor) -> Tensor:
            return super().features(x)[:1]

    assert_outcome(
        seeded(WrongBatch()), {FEATURES_METHOD: ("fail", "features(x) should have batch dimension 3, got shape (1, 3)")}
    )


# --- rule 7: an unknown returnt ----------------------------------------------------------------------------------


class UnknownReturnt(TinyNet):
    """Does ``on_unknown`` for a returnt it does not know."""

    def __init__(self, on_unknown: Callable[[Tensor, str], object]) -> None:
        super().__init__()
        self.on_unknown = on_unknown

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt not in ("out", "features", "both", "full"):
            return self.on_unknown(x, returnt)
        return super().forward(x, returnt)  # type: ignore[arg-type]


def test_an_unknown_returnt_must_raise_value_error() -> None:
    def raises(error: Exception) -> Callable[[Tensor, str], object]:
        def on_unknown(x: Tensor, returnt: str) -> object:
            raise error

        return on_unknown

    cases: list[tuple[Callable[[Tensor, str], object], Expected]] = [
        (raises(ValueError("no")), ("pass", "")),
        (raises(KeyError("not-a-returnt")), ("fail", "raised KeyError instead of ValueError: 'not-a-returnt'")),
        (raises(AssertionError("bad returnt")), ("fail", "raised AssertionError instead of ValueError: bad returnt")),
        (raises(RuntimeError("x")), ("fail", "raised RuntimeError instead of ValueError: x")),
        (lambda x, returnt: None, ("fail", "returned NoneType instead of raising ValueError")),
        (lambda x, returnt: returnt, ("fail", "returned str instead of raising ValueError")),
        (
            lambda x, returnt: (x, x),
            (
                "fail",
                "returned tuple of 2 (Tensor of shape (3, 4), Tensor of shape (3, 4)) instead of raising ValueError",
            ),
        ),
    ]
    for on_unknown, expected in cases:
        assert_outcome(seeded(UnknownReturnt(on_unknown)), {UNKNOWN: expected})


def test_the_unknown_returnt_is_tried_without_autograd() -> None:
    seen: list[tuple[str, bool]] = []

    def on_unknown(x: Tensor, returnt: str) -> object:
        seen.append((returnt, torch.is_grad_enabled()))
        raise ValueError(returnt)

    assert_outcome(seeded(UnknownReturnt(on_unknown)), {})
    assert seen == [("not-a-returnt", False)]


# --- rules 8 and 9: classifier and feature_dim -------------------------------------------------------------------


def test_a_classifier_that_is_not_the_head_is_reported() -> None:
    class Offset(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x) + 0.75  # type: ignore[no-any-return]

    class OffsetClassifier(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.head = self.classifier
            self.classifier = Offset(self.head)

        def get_classifier(self) -> nn.Module:
            return self.head

    assert_outcome(
        seeded(OffsetClassifier()),
        {CLASSIFIER: ("fail", "classifier(features) and the logits: values differ (largest difference 0.75)")},
    )


def test_a_classifier_of_the_wrong_kind_is_reported() -> None:
    class Numbered(TinyNet):
        def __init__(self, classifier: object) -> None:
            super().__init__()
            self.head = self.classifier
            del self.classifier
            self.classifier = classifier

        def get_classifier(self) -> nn.Module:
            return self.head

    assert_outcome(seeded(Numbered(7)), {CLASSIFIER: ("fail", "classifier should be a module, got int")})
    assert_outcome(seeded(Numbered("linear")), {CLASSIFIER: ("fail", "classifier should be a module, got str")})
    assert_outcome(
        seeded(Numbered(lambda f: [f])),
        {CLASSIFIER: ("fail", "classifier(features) should be a Tensor, got list of 1 (Tensor of shape (3, 3))")},
    )
    assert_outcome(
        seeded(Numbered(lambda f: f[:2])),
        {CLASSIFIER: ("fail", "classifier(features) should have batch dimension 3, got shape (2, 3)")},
    )
    assert_outcome(
        seeded(Numbered(lambda f: f)),
        {CLASSIFIER: ("fail", "classifier(features) and the logits: shapes differ, (3, 3) and (3, 2)")},
    )
    seen: list[bool] = []

    def head(features: Tensor) -> Tensor:
        seen.append(torch.is_grad_enabled())
        return net.head(features)  # type: ignore[no-any-return]

    net = seeded(Numbered(head))
    assert_outcome(net, {})
    assert seen == [False]


def test_feature_dim_must_be_the_int_d() -> None:
    class Dim(TinyNet):
        def __init__(self, feature_dim: object) -> None:
            super().__init__()
            self.feature_dim = feature_dim

    assert_outcome(seeded(Dim(3)), {})
    assert_outcome(seeded(Dim(None)), {FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute")})
    assert_outcome(seeded(Dim(4)), {FEATURE_DIM: ("fail", "feature_dim is 4 but the features have D = 3")})
    assert_outcome(seeded(Dim(2)), {FEATURE_DIM: ("fail", "feature_dim is 2 but the features have D = 3")})
    assert_outcome(seeded(Dim(3.0)), {FEATURE_DIM: ("fail", "feature_dim is 3.0 but the features have D = 3")})
    assert_outcome(seeded(Dim("3")), {FEATURE_DIM: ("fail", "feature_dim is '3' but the features have D = 3")})
    assert_outcome(seeded(Dim(0)), {FEATURE_DIM: ("fail", "feature_dim is 0 but the features have D = 3")})


# --- rules 10 to 16: the flat parameter and gradient API ---------------------------------------------------------

NUMEL = 35  # TinyNet: 12 + 3 + 9 + 3 + 6 + 2
NAMES = ["stage1.weight", "stage1.bias", "stage2.weight", "stage2.bias", "classifier.weight", "classifier.bias"]
# The checker adds 1000 to the vector it gave; where a parameter is a view of it, it moves by that much.
CHANGED_BY_1000 = "values differ (largest difference 1e+03)"


def flat_parameters(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def test_a_get_params_of_the_wrong_form_is_reported() -> None:
    class Short(TinyNet):
        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            return super().get_params()[1:]

    bad = f"get_params() should be 1-D of {NUMEL} (one element per parameter element), got Tensor of shape (34,)"
    assert_outcome(
        seeded(Short()),
        {
            SET_PARAMS: ("fail", bad),
            IDENTITY: ("fail", bad),
            PARAMS_COPIED: ("fail", bad),
            DIFFERENTIABLE: ("fail", bad),
        },
    )

    class Column(TinyNet):
        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            return super().get_params()[:, None]

    bad = f"get_params() should be 1-D of {NUMEL} (one element per parameter element), got Tensor of shape (35, 1)"
    assert_outcome(
        seeded(Column()),
        {
            SET_PARAMS: ("fail", bad),
            IDENTITY: ("fail", bad),
            PARAMS_COPIED: ("fail", bad),
            DIFFERENTIABLE: ("fail", bad),
        },
    )

    class Listed(TinyNet):
        def get_params(self, *, out: Tensor | None = None) -> list[Tensor]:  # type: ignore[override]
            return [p.reshape(-1) for p in self.parameters()][:2]

    bad = (
        f"get_params() should be 1-D of {NUMEL} (one element per parameter element), got list of 2 "
        "(Tensor of shape (12,), Tensor of shape (3,))"
    )
    assert_outcome(
        seeded(Listed()),
        {
            SET_PARAMS: ("fail", bad),
            IDENTITY: ("fail", bad),
            PARAMS_COPIED: ("fail", bad),
            DIFFERENTIABLE: ("fail", bad),
        },
    )


def test_get_params_must_be_the_parameters_in_order() -> None:
    class Doubled(TinyNet):
        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            return super().get_params() * 2

    net = seeded(Doubled())
    values = flat_parameters(net)
    assert_outcome(
        net,
        {
            SET_PARAMS: (
                "fail",
                "get_params() and the parameters in parameters() order: values differ (largest difference "
                f"{largest(values * 2, values)})",
            ),
            DIFFERENTIABLE: ("fail", differs("the .grad of each parameter after backward through get_params()")),
        },
    )


def test_set_params_must_write_each_slice() -> None:
    class Ignored(TinyNet):
        def set_params(self, new_params: Tensor) -> None:
            pass

    assert_outcome(
        seeded(Ignored()), {SET_PARAMS: ("fail", differs("each parameter after set_params(v) and its slice of v"))}
    )

    class Shifted(TinyNet):
        """Writes every slice one element late: a shifted layout."""

        def set_params(self, new_params: Tensor) -> None:
            super().set_params(torch.roll(new_params, 1))

    assert_outcome(
        seeded(Shifted()), {SET_PARAMS: ("fail", differs("each parameter after set_params(v) and its slice of v"))}
    )


class Marking(TinyNet):
    """Records, as a tensor attribute, that set_params or set_grads ran: the checker removes it after each rule."""

    def mark(self, name: str) -> None:
        setattr(self, name, torch.ones(()))

    def marked(self, name: str) -> bool:
        return isinstance(vars(self).get(name), Tensor)


def test_get_params_must_read_back_what_set_params_wrote() -> None:
    class Stale(Marking):
        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            self.mark("written")

        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            params = super().get_params()
            return params * 0 if self.marked("written") else params

    assert_outcome(seeded(Stale()), {SET_PARAMS: ("fail", differs("get_params() after set_params(v)"))})


def test_the_logits_must_survive_a_params_round_trip() -> None:
    class Shifting(Marking):
        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            self.mark("shift")

        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return result + 1 if returnt == "out" and self.marked("shift") else result

    assert_outcome(
        seeded(Shifting()),
        {SET_PARAMS: ("fail", "the logits after set_params(get_params()): values differ (largest difference 1)")},
    )


def test_set_params_must_keep_the_parameter_objects() -> None:
    class Replaces(TinyNet):
        def __init__(self, replaced: list[str]) -> None:
            super().__init__()
            self.replaced = replaced

        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            for name in self.replaced:
                module_name, _, attribute = name.rpartition(".")
                module = self.get_submodule(module_name)
                setattr(module, attribute, nn.Parameter(getattr(module, attribute).detach().clone()))

    tail = "; an optimizer built before would no longer update them (copy into the parameters in place instead)"
    assert_outcome(
        seeded(Replaces(["classifier.bias"])),
        {IDENTITY: ("fail", f"set_params replaced the Parameter objects classifier.bias{tail}")},
    )
    assert_outcome(
        seeded(Replaces(["stage1.bias", "classifier.weight"])),
        {IDENTITY: ("fail", f"set_params replaced the Parameter objects stage1.bias, classifier.weight{tail}")},
    )
    assert_outcome(
        seeded(Replaces(NAMES)),
        {IDENTITY: ("fail", f"set_params replaced the Parameter objects {', '.join(NAMES[:5])}{tail}")},
    )


def test_set_params_must_not_add_or_remove_parameters() -> None:
    class Adds(TinyNet):
        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            self.classifier.extra = nn.Parameter(torch.zeros(1))  # registered last

    tail = "; an optimizer built before would no longer update them (copy into the parameters in place instead)"
    results = results_of(seeded(Adds()))
    by_rule = {r.rule: r for r in results}
    assert (by_rule[IDENTITY].status, by_rule[IDENTITY].detail) == (
        "fail",
        f"set_params replaced the Parameter objects (the number of parameters changed){tail}",
    )

    class Removes(TinyNet):
        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            del self.classifier.bias
            self.classifier.bias = None  # type: ignore[assignment]

    results = results_of(seeded(Removes()))
    by_rule = {r.rule: r for r in results}
    assert (by_rule[IDENTITY].status, by_rule[IDENTITY].detail) == (
        "fail",
        f"set_params replaced the Parameter objects (the number of parameters changed){tail}",
    )


def test_set_params_and_set_grads_must_copy_the_vector() -> None:
    class ParamsAlias(TinyNet):
        def set_params(self, new_params: Tensor) -> None:
            offset = 0
            for p in self.parameters():
                p.data = new_params[offset : offset + p.numel()].view(p.shape)
                offset += p.numel()

    assert_outcome(
        seeded(ParamsAlias()),
        {
            PARAMS_COPIED: (
                "fail",
                "the parameters before and after the vector given to set_params(v) changed (set_params must copy v, "
                f"not make the parameters views of it): {CHANGED_BY_1000}",
            )
        },
    )

    class GradsAlias(TinyNet):
        def set_grads(self, new_grads: Tensor) -> None:
            offset = 0
            for p in self.parameters():
                p.grad = new_grads[offset : offset + p.numel()].view(p.shape)
                offset += p.numel()

    assert_outcome(
        seeded(GradsAlias()),
        {
            GRADS_COPIED: (
                "fail",
                "the .grad of each parameter before and after the vector given to set_grads(v) changed (set_grads "
                f"must copy v, not make the gradients views of it): {CHANGED_BY_1000}",
            )
        },
    )

    class FirstGradAlias(TinyNet):
        """Only the first .grad is a view: the whole of every .grad is compared, not only the last."""

        def set_grads(self, new_grads: Tensor) -> None:
            super().set_grads(new_grads)
            first = next(self.parameters())
            first.grad = new_grads[: first.numel()].view(first.shape)

    assert_outcome(
        seeded(FirstGradAlias()),
        {
            GRADS_COPIED: (
                "fail",
                "the .grad of each parameter before and after the vector given to set_grads(v) changed (set_grads "
                f"must copy v, not make the gradients views of it): {CHANGED_BY_1000}",
            )
        },
    )


def test_get_params_must_be_differentiable() -> None:
    class Detached(TinyNet):
        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            return super().get_params().detach()

    assert_outcome(
        seeded(Detached()),
        {
            DIFFERENTIABLE: (
                "fail",
                "get_params() is detached from the parameters; a penalty built from it (EWC) sends them no gradient",
            )
        },
    )


def test_differentiability_is_checked_under_no_grad_too() -> None:
    net = seeded(TinyNet())
    with torch.no_grad():
        assert_outcome(net, {})
    with torch.inference_mode():
        assert_outcome(net, {})


def test_a_frozen_backbone_skips_differentiability_and_a_partly_frozen_one_passes() -> None:
    frozen = seeded(TinyNet()).requires_grad_(False)
    assert_outcome(
        frozen, {DIFFERENTIABLE: ("skip", "no parameter requires grad, so there is nothing to differentiate")}
    )
    partly = seeded(TinyNet())
    partly.stage2.requires_grad_(False)
    assert_outcome(partly, {})
    only_one = seeded(TinyNet()).requires_grad_(False)
    only_one.classifier.bias.requires_grad_(True)
    assert_outcome(only_one, {})
    tied = seeded(TiedFrozenUnused())
    assert_outcome(tied, {})


def test_the_gradient_of_get_params_must_reach_each_parameter() -> None:
    class LeavesOutOne(TinyNet):
        """get_params() reads the first parameter detached: its .grad stays missing."""

        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            pieces = [p.reshape(-1) for p in self.parameters()]
            pieces[0] = pieces[0].detach()
            return torch.cat(pieces)

    assert_outcome(
        seeded(LeavesOutOne()),
        {DIFFERENTIABLE: ("fail", differs("the .grad of each parameter after backward through get_params()"))},
    )

    class GradsOutOfOrder(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            return torch.cat(
                [
                    torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                    for p in list(self.parameters())[::-1]
                ]
            )

    assert_outcome(
        seeded(GradsOutOfOrder()),
        {
            DIFFERENTIABLE: ("fail", differs("get_grads() after backward through get_params()")),
            SET_GRADS: ("fail", differs("get_grads() and the parameters' .grad")),
        },
    )


def test_get_grads_must_be_the_grads_in_order_and_read_back() -> None:
    class Zeros(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            return torch.zeros(NUMEL)

    assert_outcome(
        seeded(Zeros()),
        {
            DIFFERENTIABLE: ("fail", differs("get_grads() after backward through get_params()")),
            SET_GRADS: ("fail", differs("get_grads() and the parameters' .grad")),
        },
    )

    class Ignored(TinyNet):
        def set_grads(self, new_grads: Tensor) -> None:
            pass

    assert_outcome(
        seeded(Ignored()),
        {
            SET_GRADS: ("fail", differs("each parameter's .grad after set_grads(v) and its slice of v")),
            GRADS_NONE_OR_NOT: (
                "fail",
                "set_grads(v) left .grad None where the gradients were None: stage1.weight, stage1.bias, "
                "stage2.weight, stage2.bias, classifier.weight (set_grads must create a missing .grad, not only "
                "write the existing ones)",
            ),
        },
    )

    class Stale(Marking):
        def set_grads(self, new_grads: Tensor) -> None:
            super().set_grads(new_grads)
            self.mark("written")

        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            grads = super().get_grads()
            return grads * 0 if self.marked("written") else grads

    assert_outcome(seeded(Stale()), {SET_GRADS: ("fail", differs("get_grads() after set_grads(v)"))})

    class Shifting(Marking):
        def set_grads(self, new_grads: Tensor) -> None:
            super().set_grads(new_grads)
            self.mark("shift")

        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return result - 0.5 if returnt == "out" and self.marked("shift") else result

    assert_outcome(
        seeded(Shifting()),
        {SET_GRADS: ("fail", "the logits after a grads round-trip: values differ (largest difference 0.5)")},
    )

    class Short(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            return super().get_grads()[:-1]

    bad = "should be 1-D of 35 (one element per parameter element), got Tensor of shape (34,)"
    assert_outcome(
        seeded(Short()),
        {
            DIFFERENTIABLE: ("fail", f"get_grads() {bad}"),
            SET_GRADS: ("fail", f"get_grads() {bad}"),
            GRADS_COPIED: ("fail", f"get_grads() {bad}"),
            MISSING_GRADS: ("fail", f"get_grads() with every .grad None {bad}"),
        },
    )


def test_the_grads_round_trip_starts_from_a_real_backward() -> None:
    """get_grads() is compared with the .grad a backward of the logits left, not with missing (zero) ones."""

    class NoneAsOnes(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            return torch.cat(
                [torch.ones(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in self.parameters()]
            )

    assert_outcome(
        seeded(NoneAsOnes()),
        {MISSING_GRADS: ("fail", "get_grads() with every .grad None: values differ (largest difference 1)")},
    )

    seen: list[tuple[bool, ...]] = []

    class Watching(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            seen.append(tuple(p.grad is not None and bool(p.grad.any()) for p in self.parameters()))
            return super().get_grads()

    net = seeded(Watching())
    x = batch()
    assert_outcome(net, {}, x=x)
    # The first get_grads() of the round-trip rule sees the gradient of the logits' sum: every parameter has one.
    assert (True,) * 6 in seen


def test_pre_existing_gradients_are_cleared_before_the_gradient_rules() -> None:
    net = seeded(TinyNet())
    for p in net.parameters():
        p.grad = torch.full_like(p, 5.0)
    assert_outcome(net, {})
    assert all(torch.equal(p.grad, torch.full_like(p, 5.0)) for p in net.parameters())  # type: ignore[arg-type]


def test_missing_grads_must_read_as_zeros() -> None:
    class EmptyWhenMissing(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            if all(p.grad is None for p in self.parameters()):
                return torch.zeros(0)
            return super().get_grads()

    assert_outcome(
        seeded(EmptyWhenMissing()),
        {
            MISSING_GRADS: (
                "fail",
                f"get_grads() with every .grad None should be 1-D of {NUMEL} (one element per parameter element), "
                "got Tensor of shape (0,)",
            ),
            GRADS_COPIED: (
                "fail",
                f"get_grads() should be 1-D of {NUMEL} (one element per parameter element), got Tensor of shape (0,)",
            ),
        },
    )


class GradsList(TinyNet):
    def __init__(self, grads_list: Callable[[nn.Module], object]) -> None:
        super().__init__()
        self.grads_list = grads_list

    def get_grads_list(self):  # type: ignore[no-untyped-def, override]
        return self.grads_list(self)


def test_get_grads_list_must_give_one_zero_tensor_per_parameter() -> None:
    per_parameter = "get_grads_list() with every .grad None should give one tensor per parameter, got "
    zeros = "get_grads_list() with every .grad None should give zeros for each parameter"
    cases: list[tuple[Callable[[nn.Module], object], Expected]] = [
        (lambda net: [torch.zeros(p.numel()) for p in net.parameters()], ("pass", "")),
        (lambda net: [torch.zeros(p.shape) for p in net.parameters()], ("pass", "")),
        (
            lambda net: [torch.zeros(p.numel()) for p in net.parameters()][:-1],
            (
                "fail",
                per_parameter + "list of 5 (Tensor of shape (12,), Tensor of shape (3,), Tensor of shape (9,), "
                "Tensor of shape (3,), Tensor of shape (6,))",
            ),
        ),
        (
            lambda net: tuple(torch.zeros(p.numel()) for p in net.parameters()),
            (
                "fail",
                per_parameter + "tuple of 6 (Tensor of shape (12,), Tensor of shape (3,), Tensor of shape (9,), "
                "Tensor of shape (3,), Tensor of shape (6,), Tensor of shape (2,))",
            ),
        ),
        (lambda net: None, ("fail", per_parameter + "NoneType")),
        (lambda net: [torch.ones(p.numel()) for p in net.parameters()], ("fail", zeros)),
        (
            lambda net: [*[torch.zeros(p.numel()) for p in net.parameters()][:-1], torch.tensor([0.0, 1.0])],
            ("fail", zeros),
        ),
        (lambda net: [torch.zeros(p.numel() + 1) for p in net.parameters()], ("fail", zeros)),
        (lambda net: [*[torch.zeros(p.numel()) for p in net.parameters()][:-1], torch.zeros(1)], ("fail", zeros)),
        (lambda net: [*[torch.zeros(p.numel()) for p in net.parameters()][:-1], [0.0, 0.0]], ("fail", zeros)),
        (lambda net: [None] * 6, ("fail", zeros)),
    ]
    for grads_list, expected in cases:
        assert_outcome(seeded(GradsList(grads_list)), {MISSING_GRADS: expected})


def test_get_grads_list_is_only_checked_when_callable() -> None:
    class NotCallable(TinyNet):
        get_grads_list = None  # type: ignore[assignment]

    assert_outcome(seeded(NotCallable()), {})


def test_get_grads_list_is_asked_with_every_grad_missing() -> None:
    seen: list[list[bool]] = []

    def grads_list(net: nn.Module) -> list[Tensor]:
        seen.append([p.grad is None for p in net.parameters()])
        return [torch.zeros(p.numel()) for p in net.parameters()]

    net = seeded(GradsList(grads_list))
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    assert_outcome(net, {})
    assert seen == [[True] * 6]


class Parameterless(MammothBackbone):
    """A fixed computation with no parameter at all."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 4

    def forward_features(self, x: Tensor) -> Tensor:
        return x * 2

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else x[:, :2] - x[:, 2:]

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, list[Tensor]]:  # type: ignore[override]
        final = self.forward_features(x)
        return final, [final]


def test_a_backbone_without_parameters_skips_what_needs_one() -> None:
    assert_outcome(
        Parameterless(),
        {
            CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
            DIFFERENTIABLE: ("skip", "no parameter requires grad, so there is nothing to differentiate"),
            GRADS_NONE_OR_NOT: ("skip", "the backbone has no parameters"),
            MISSING_GRADS: ("skip", "the backbone has no parameters"),
        },
    )


# --- rule 17: to(torch.float64) ----------------------------------------------------------------------------------


def test_a_backbone_that_cannot_be_deep_copied_skips_the_float64_rule() -> None:
    class NoCopies(TinyNet):
        def __deepcopy__(self, memo: dict[int, Any]) -> NoCopies:
            raise RuntimeError("no copies here")

    assert_outcome(
        seeded(NoCopies()),
        {FLOAT64: ("skip", "the backbone cannot be deep-copied, so to() was not tried on it: no copies here")},
    )


def test_to_must_return_the_backbone_and_convert_every_parameter() -> None:
    class ReturnsNothing(TinyNet):
        def to(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            super().to(*args, **kwargs)

    assert_outcome(
        seeded(ReturnsNothing()), {FLOAT64: ("fail", "to() should return the backbone itself, got NoneType")}
    )

    class ReturnsACopy(TinyNet):
        def to(self, *args: Any, **kwargs: Any) -> TinyNet:  # type: ignore[override]
            return copy.deepcopy(super().to(*args, **kwargs))

    assert_outcome(
        seeded(ReturnsACopy()), {FLOAT64: ("fail", "to() should return the backbone itself, got ReturnsACopy")}
    )

    class Ignores(TinyNet):
        def to(self, *args: Any, **kwargs: Any) -> TinyNet:  # type: ignore[override]
            return self

    assert_outcome(
        seeded(Ignores()),
        {FLOAT64: ("fail", f"parameters not converted to float64: {', '.join(NAMES[:5])}")},
    )

    class LeavesTheBias(TinyNet):
        def to(self, *args: Any, **kwargs: Any) -> TinyNet:  # type: ignore[override]
            bias = self.classifier.bias.data
            super().to(*args, **kwargs)
            self.classifier.bias.data = bias
            return self

    assert_outcome(seeded(LeavesTheBias()), {FLOAT64: ("fail", "parameters not converted to float64: classifier.bias")})

    class Half(TinyNet):
        def to(self, *args: Any, **kwargs: Any) -> TinyNet:  # type: ignore[override]
            return super().to(torch.float16)

    assert_outcome(seeded(Half()), {FLOAT64: ("fail", f"parameters not converted to float64: {', '.join(NAMES[:5])}")})


def test_the_float64_logits_must_be_float64_and_agree() -> None:
    class BackToFloat32(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return result.float() if isinstance(result, Tensor) else result

    assert_outcome(
        seeded(BackToFloat32()),
        {FLOAT64: ("fail", "the logits should be float64 after to(torch.float64), got torch.float32")},
    )

    class Offset(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return result + 0.25 if x.dtype == torch.float64 and returnt == "out" else result

    assert_outcome(
        seeded(Offset()),
        {FLOAT64: ("fail", "the float64 and original logits: values differ (largest difference 0.25)")},
    )

    class WrongBatch(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return result[:1] if x.dtype == torch.float64 and returnt == "out" else result

    assert_outcome(
        seeded(WrongBatch()),
        {FLOAT64: ("fail", "the float64 logits should have batch dimension 3, got shape (1, 2)")},
    )

    class NotATensor(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            return None if x.dtype == torch.float64 and returnt == "out" else result

    assert_outcome(seeded(NotATensor()), {FLOAT64: ("fail", "the float64 logits should be a Tensor, got NoneType")})


def test_the_float64_rule_works_on_a_copy_with_a_float64_input() -> None:
    seen: list[tuple[torch.dtype, torch.dtype, bool]] = []

    class Watching(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            if x.dtype == torch.float64:
                seen.append((x.dtype, self.stage1.weight.dtype, torch.is_grad_enabled()))
            return super().forward(x, returnt)  # type: ignore[arg-type]

    net = seeded(Watching())
    x = batch()
    assert_outcome(net, {}, x=x)
    assert seen == [(torch.float64, torch.float64, False)]
    assert all(p.dtype == torch.float32 for p in net.parameters()) and x.dtype == torch.float32


class Embedded(MammothBackbone):
    """Takes integer token ids, which must stay integers in the float64 rule."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 3)
        self.classifier = nn.Linear(3, 2)
        self.feature_dim = 3
        self.feature_info = [{"num_chs": 3, "reduction": 1, "module": "embedding"}]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.embedding(x).mean(1)  # type: ignore[no-any-return]


def test_an_integer_input_stays_an_integer_input() -> None:
    x = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(0))
    assert_outcome(seeded(Embedded()), {}, x=x)


# --- rule 18: set_return_prerelu -----------------------------------------------------------------------------------


class Prerelu(TinyNet):
    """'full' gives the two stages after their ReLU, or before it once set_return_prerelu(True) ran."""

    def __init__(self, change: Callable[[Any, list[Tensor], bool], tuple[Tensor, list[Tensor]]] | None = None) -> None:
        super().__init__()
        self.return_prerelu = False
        self.change = change
        self.toggles: list[bool] = []

    def set_return_prerelu(self, enable: bool = True) -> None:
        self.toggles.append(enable)
        self.return_prerelu = enable

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt != "full":
            return super().forward(x, returnt)  # type: ignore[arg-type]
        h1 = self.stage1(x)
        h2 = self.stage2(h1.relu())
        logits = self.classifier(h2.relu())
        stages = [h1, h2] if self.return_prerelu else [h1.relu(), h2.relu()]
        if self.change is not None:
            return self.change(logits, stages, self.return_prerelu)
        return logits, stages


def prerelu_batch() -> Tensor:
    """A batch on which both stages of ``seeded(Prerelu())`` have negative, zero (after ReLU) and positive values."""
    return batch(rows=6, seed=3)


def test_a_working_set_return_prerelu_passes_and_is_switched_back() -> None:
    net = seeded(Prerelu())
    x = prerelu_batch()
    with torch.no_grad():
        h1 = net.stage1(x)
        h2 = net.stage2(h1.relu())
    assert bool((h1 < 0).any() and (h1 > 0).any() and (h2 < 0).any() and (h2 > 0).any())
    assert_outcome(net, {}, x=x, prerelu=("pass", ""))
    assert net.toggles == [True, False] and net.return_prerelu is False
    switched_on = seeded(Prerelu())
    switched_on.return_prerelu = True
    assert_outcome(switched_on, {}, x=x, prerelu=("pass", ""))
    assert switched_on.toggles == [True, True] and switched_on.return_prerelu is True


def test_a_set_return_prerelu_that_is_not_callable_is_skipped() -> None:
    class NotCallable(TinyNet):
        set_return_prerelu = True

    assert_outcome(seeded(NotCallable()), {})


def test_a_set_return_prerelu_that_does_nothing_fails() -> None:
    class Ignored(Prerelu):
        def set_return_prerelu(self, enable: bool = True) -> None:
            self.toggles.append(enable)

    net = seeded(Ignored())
    assert_outcome(
        net,
        {},
        x=prerelu_batch(),
        prerelu=(
            "fail",
            "stage 0 is unchanged and looks like a ReLU output (no negative values, some zeros and some positive "
            "ones); set_return_prerelu(True) should give it before its activation",
        ),
    )
    # Switched on and back for the rule, then again for the run in training mode that looks for negative values.
    assert net.toggles == [True, False, True, False]


def prerelu_outcome(change: Callable[[Any, list[Tensor], bool], tuple[Tensor, list[Tensor]]]) -> Expected:
    (result,) = [r for r in results_of(seeded(Prerelu(change)), prerelu_batch()) if r.rule == PRERELU]
    return result.status, result.detail


def test_each_way_a_set_return_prerelu_can_go_wrong() -> None:
    net = seeded(Prerelu())
    with torch.no_grad():
        column_sums = net.classifier.weight.sum(1)
    shifted = f"{column_sums.abs().max().item():.3g}"
    cases: list[tuple[Callable[[Any, list[Tensor], bool], Any], Expected]] = [
        # The logits change: the classifier sees features shifted by one.
        (
            lambda logits, stages, pre: (logits + column_sums if pre else logits, stages),
            (
                "fail",
                f"the logits with and without set_return_prerelu(True): values differ (largest difference {shifted})",
            ),
        ),
        (
            lambda logits, stages, pre: (logits, stages[:1]) if pre else (logits, stages),
            ("fail", "1 pre-activation stages for 2 stages"),
        ),
        (
            lambda logits, stages, pre: (logits, [*stages, stages[0]]) if pre else (logits, stages),
            ("fail", "3 pre-activation stages for 2 stages"),
        ),
        (
            lambda logits, stages, pre: (logits, [stages[0][:, None], stages[1]]) if pre else (logits, stages),
            ("fail", "stage 0: shapes differ, (6, 1, 3) and (6, 3)"),
        ),
        (
            lambda logits, stages, pre: (logits, [stages[0], stages[1][:, :2]]) if pre else (logits, stages),
            ("fail", "stage 1: shapes differ, (6, 2) and (6, 3)"),
        ),
        # The "pre-activation" stage is the output plus one: its ReLU is not the output.
        (
            lambda logits, stages, pre: (logits, [stages[0], stages[1].relu() + 1]) if pre else (logits, stages),
            ("fail", "stage 1: relu of the pre-activation output and the output: values differ (largest difference 1)"),
        ),
        (
            lambda logits, stages, pre: logits if pre else (logits, stages),
            (
                "fail",
                "returnt='full' after set_return_prerelu(True) should be (logits, [stages]), got Tensor of shape "
                "(6, 2)",
            ),
        ),
        (
            lambda logits, stages, pre: (logits, tuple(stages)) if pre else (logits, stages),
            (
                "fail",
                "returnt='full' after set_return_prerelu(True) should be (logits, [stages]), got tuple of 2 "
                "(Tensor of shape (6, 2), tuple of 2 (Tensor of shape (6, 3), Tensor of shape (6, 3)))",
            ),
        ),
        (
            lambda logits, stages, pre: (logits, stages, stages) if pre else (logits, stages),
            (
                "fail",
                "returnt='full' after set_return_prerelu(True) should be (logits, [stages]), got tuple of 3 "
                "(Tensor of shape (6, 2), list of 2 (Tensor of shape (6, 3), Tensor of shape (6, 3)), list of 2 "
                "(Tensor of shape (6, 3), Tensor of shape (6, 3)))",
            ),
        ),
        (
            lambda logits, stages, pre: [logits, stages],
            (
                "fail",
                "returnt='full' should be (logits, [stages]), got list of 2 (Tensor of shape (6, 2), list of 2 "
                "(Tensor of shape (6, 3), Tensor of shape (6, 3)))",
            ),
        ),
        (
            lambda logits, stages, pre: (logits,),
            ("fail", "returnt='full' should be (logits, [stages]), got tuple of 1 (Tensor of shape (6, 2))"),
        ),
    ]
    for change, expected in cases:
        assert prerelu_outcome(change) == expected


def test_an_unchanged_stage_is_accepted_only_where_it_cannot_be_a_relu_output() -> None:
    def keep(stage: Callable[[Tensor], Tensor]) -> Callable[[Any, list[Tensor], bool], Any]:
        """The second stage is ``stage(output after the ReLU)``, with and without the switch."""
        return lambda logits, stages, pre: (logits, [stages[0], stage(stages[1].relu())])

    ok: Expected = ("pass", "")
    relu_like = (
        "fail",
        "stage 1 is unchanged and looks like a ReLU output (no negative values, some zeros and some positive ones); "
        "set_return_prerelu(True) should give it before its activation",
    )
    # A stage with negative values cannot be a ReLU output: no activation follows it.
    assert prerelu_outcome(keep(lambda s: s - 0.5)) == ok
    # All zeros (a zero input, say) or all positive: it cannot tell, so it is accepted.
    assert prerelu_outcome(keep(lambda s: s * 0)) == ok
    assert prerelu_outcome(keep(lambda s: s.abs() + 1)) == ok
    # Zeros and positive values, and nothing negative: what a ReLU gives.
    assert prerelu_outcome(keep(lambda s: s.relu())) == relu_like
    # Only positive values and zeros but a single zero is enough.
    assert prerelu_outcome(keep(lambda s: torch.cat([s[:1] * 0, s[1:].abs() + 1]))) == relu_like
    # A single negative value is enough too.
    assert prerelu_outcome(keep(lambda s: torch.cat([-torch.ones_like(s[:1]), s[1:].relu()]))) == ok


def test_set_return_prerelu_is_switched_back_even_when_full_then_raises() -> None:
    def change(logits: Tensor, stages: list[Tensor], pre: bool) -> tuple[Tensor, list[Tensor]]:
        if pre:
            raise RuntimeError("no pre-activations")
        return logits, stages

    net = seeded(Prerelu(change))
    assert_outcome(net, {}, x=prerelu_batch(), prerelu=("fail", "raised RuntimeError: no pre-activations"))
    assert net.toggles == [True, False] and net.return_prerelu is False


def test_the_prerelu_rule_runs_without_autograd() -> None:
    seen: list[bool] = []

    def change(logits: Tensor, stages: list[Tensor], pre: bool) -> tuple[Tensor, list[Tensor]]:
        seen.append(torch.is_grad_enabled())
        return logits, stages

    net = seeded(Prerelu(change))
    assert_outcome(net, {}, x=prerelu_batch(), prerelu=("pass", ""))
    assert seen[-2:] == [False, False]


def test_a_reference_backbone_with_set_return_prerelu_passes_every_rule() -> None:
    torch.manual_seed(0)
    net = MNISTMLP(4, 2, hidden_size=3)
    assert_outcome(net, {}, x=prerelu_batch(), prerelu=("pass", ""))
    assert net.return_prerelu is False


# --- the backbone is left as it was found --------------------------------------------------------------------------


def snapshot(net: nn.Module) -> dict[str, Any]:
    return {
        "modes": [(name, m.training) for name, m in net.named_modules()],
        "params": [(name, p, p.dtype, p.shape, p.detach().clone()) for name, p in net.named_parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()],
        "buffers": [(name, b, b.dtype, b.detach().clone()) for name, b in net.named_buffers()],
        "attributes": [
            (name, key, value, value.clone())
            for name, m in net.named_modules()
            for key, value in vars(m).items()
            if isinstance(value, Tensor)
        ],
    }


def assert_as_found(net: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(net)
    assert after["modes"] == before["modes"]
    assert len(after["params"]) == len(before["params"])
    for (n0, p0, d0, s0, v0), (n1, p1, d1, s1, v1) in zip(before["params"], after["params"], strict=True):
        assert (n0, d0, s0) == (n1, d1, s1) and p0 is p1 and torch.equal(v0, v1)
    for (g0, v0), (g1, v1) in zip(before["grads"], after["grads"], strict=True):
        assert g0 is g1
        assert (v0 is None and v1 is None) or torch.equal(v0, v1)
    assert [(n, b, d) for n, b, d, _ in after["buffers"]] == [(n, b, d) for n, b, d, _ in before["buffers"]]
    for (_, _, _, v0), (_, _, _, v1) in zip(before["buffers"], after["buffers"], strict=True):
        assert torch.equal(v0, v1)
    assert [(n, k, v) for n, k, v, _ in after["attributes"]] == [(n, k, v) for n, k, v, _ in before["attributes"]]
    for (_, _, _, v0), (_, _, _, v1) in zip(before["attributes"], after["attributes"], strict=True):
        assert torch.equal(v0, v1)


class Meddling(TinyNet):
    """Changes every kind of state there is, in forward and in the flat methods, and breaks the set_params rules."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(3))
        self.stage2.note = torch.ones(2)

    def forward_features(self, x: Tensor) -> Tensor:
        features = super().forward_features(x)
        self.count += 1  # in place
        self.mean = features.detach().mean(0)  # reassigned
        self.stage1.seen = x.detach()  # added
        self.stage2.note = torch.zeros(5)  # reassigned, another shape
        self.classifier.register_buffer("added", torch.ones(1))  # a buffer that was not there
        self.stage2.train()  # a mode
        return features

    def set_params(self, new_params: Tensor) -> None:
        super().set_params(new_params)
        with torch.no_grad():
            self.stage1.weight.data = self.stage1.weight.data.double()  # another dtype
            self.stage1.bias.data = torch.zeros(7)  # another shape
            self.stage2.weight = nn.Parameter(self.stage2.weight.detach().clone())  # another object
            self.classifier.extra = nn.Parameter(torch.zeros(2))  # a parameter that was not there

    def set_grads(self, new_grads: Tensor) -> None:
        super().set_grads(new_grads)
        first = next(self.parameters())
        first.grad = torch.zeros_like(first)  # another .grad object


def test_everything_a_rule_changes_is_put_back() -> None:
    for with_grads in (False, True):
        net = seeded(Meddling()).train()
        net.classifier.eval()
        if with_grads:
            for i, p in enumerate(net.parameters()):
                p.grad = None if i == 3 else torch.full_like(p, float(i))
        before = snapshot(net)
        results = results_of(net)
        assert [r.rule for r in results if r.status == "fail"] == [SET_PARAMS, IDENTITY, SET_GRADS, GRADS_NONE_OR_NOT]
        assert_as_found(net, before)
        assert "seen" not in vars(net.stage1) and "added" not in net.classifier._buffers
        assert "extra" not in net.classifier._parameters


def test_each_rule_starts_from_the_backbone_as_found() -> None:
    """A rule that leaves the backbone changed (here: it raises half-way) does not change what the next one sees."""

    class Breaks(TinyNet):
        def set_params(self, new_params: Tensor) -> None:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(100)
                self.classifier.weight.data = torch.zeros(9)
                self.scale = torch.full((), 3.0)
            raise RuntimeError("broke half-way")

        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            assert "scale" not in vars(self)
            return super().get_grads()

    net = seeded(Breaks())
    before = snapshot(net)
    assert_outcome(
        net,
        {
            SET_PARAMS: ("fail", "set_params() raised RuntimeError: broke half-way"),
            IDENTITY: ("fail", "set_params() raised RuntimeError: broke half-way"),
            PARAMS_COPIED: ("fail", "set_params() raised RuntimeError: broke half-way"),
        },
    )
    assert_as_found(net, before)


def test_gradient_objects_and_values_are_put_back() -> None:
    net = seeded(TinyNet())
    grads = {}
    for i, p in enumerate(net.parameters()):
        if i % 2 == 0:
            p.grad = torch.full_like(p, float(i + 1))
            grads[i] = p.grad
    before = snapshot(net)
    assert_outcome(net, {})
    assert_as_found(net, before)
    for i, p in enumerate(net.parameters()):
        if i in grads:
            assert p.grad is grads[i] and bool((p.grad == i + 1).all())
        else:
            assert p.grad is None


def test_errors_raised_by_the_backbone_are_reported_with_their_message() -> None:
    class Raises(TinyNet):
        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            raise KeyError("gradients")

        def set_params(self, new_params: Tensor) -> None:
            raise ValueError("no writing")

    assert_outcome(
        seeded(Raises()),
        {
            SET_PARAMS: ("fail", "set_params() raised ValueError: no writing"),
            IDENTITY: ("fail", "set_params() raised ValueError: no writing"),
            PARAMS_COPIED: ("fail", "set_params() raised ValueError: no writing"),
            DIFFERENTIABLE: ("fail", "get_grads() raised KeyError: 'gradients'"),
            SET_GRADS: ("fail", "get_grads() raised KeyError: 'gradients'"),
            GRADS_COPIED: ("fail", "get_grads() raised KeyError: 'gradients'"),
            MISSING_GRADS: ("fail", "get_grads() raised KeyError: 'gradients'"),
        },
    )


def test_the_rules_run_in_eval_mode_and_the_modes_come_back() -> None:
    modes: list[tuple[bool, ...]] = []

    class Watching(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            modes.append(tuple(m.training for m in self.modules()))
            return super().forward(x, returnt)  # type: ignore[arg-type]

    net = seeded(Watching()).train()
    net.stage2.eval()
    assert_outcome(net, {})
    assert modes and set(modes) == {(False,) * 6}
    assert [m.training for m in net.modules()] == [True, True, True, False, True, True]


def test_the_example_input_is_not_changed_and_not_used_in_place() -> None:
    class Scribbles(TinyNet):
        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            result = super().forward(x, returnt)  # type: ignore[arg-type]
            with torch.no_grad():
                x.add_(1)
            return result

    x = batch()
    copy_of_x = x.clone()
    results_of(seeded(Scribbles()), x)
    assert torch.equal(x, copy_of_x)


# --- tolerances, missing methods, and late changes of form ----------------------------------------------------------


class ScaledFeatures(TinyNet):
    """features(x) is returnt='features' times ``1 + relative`` plus ``absolute``."""

    def __init__(self, relative: float = 0.0, absolute: float = 0.0) -> None:
        super().__init__()
        self.relative, self.absolute = relative, absolute

    def features(self, x: Tensor) -> Tensor:
        return super().features(x) * (1 + self.relative) + self.absolute


def test_rtol_and_atol_are_each_used_as_given() -> None:
    # A relative error of 1e-3 passes with rtol=1e-2 alone, and fails with rtol=0 and with the defaults.
    relative = seeded(ScaledFeatures(relative=1e-3))
    assert_outcome(relative, {}, rtol=1e-2, atol=0.0)
    assert_outcome(relative, {FEATURES_METHOD: ("fail", differs("features(x) and returnt='features'"))}, rtol=0.0)
    assert_outcome(relative, {FEATURES_METHOD: ("fail", differs("features(x) and returnt='features'"))})
    assert_outcome(
        relative, {FEATURES_METHOD: ("fail", differs("features(x) and returnt='features'"))}, rtol=0.0, atol=1e-5
    )
    # An absolute error of 1e-3 passes with atol=1e-2 alone, and fails with atol=0 and with the defaults.
    absolute = seeded(ScaledFeatures(absolute=1e-3))
    assert_outcome(absolute, {}, rtol=0.0, atol=1e-2)
    failed = {FEATURES_METHOD: ("fail", "features(x) and returnt='features': values differ (largest difference 0.001)")}
    assert_outcome(absolute, failed, atol=0.0, rtol=1e-4)
    assert_outcome(absolute, failed)


def test_features_that_are_not_2d_break_every_rule_that_uses_them() -> None:
    net = seeded(Replacing(features=lambda result, x: result[:, :, None]))
    bad = "returnt='features' should be 2-D, got shape (3, 3, 1)"
    assert_outcome(
        net,
        {
            FEATURES: ("fail", bad),
            BOTH: ("fail", bad),
            FEATURES_METHOD: ("fail", bad),
            CLASSIFIER: ("fail", bad),
            FEATURE_DIM: ("fail", bad),
        },
    )


class OnlyForward(nn.Module):
    """A plain module that takes returnt, without any other method of the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.body = seeded(TinyNet())

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def]
        return self.body(x, returnt)


def test_missing_methods_are_named() -> None:
    missing = "the backbone has no {}() method (inherit from MammothBackbone)"
    assert_outcome(
        OnlyForward(),
        {
            HEAD: ("skip", "the backbone has no forward_features and forward_head"),
            FEATURES_METHOD: ("fail", missing.format("features")),
            CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
            FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
            SET_PARAMS: ("fail", missing.format("get_params")),
            IDENTITY: ("fail", missing.format("get_params")),
            PARAMS_COPIED: ("fail", missing.format("get_params")),
            DIFFERENTIABLE: ("fail", missing.format("get_params")),
            SET_GRADS: ("fail", missing.format("get_grads")),
            GRADS_COPIED: ("fail", missing.format("get_grads")),
            GRADS_NONE_OR_NOT: ("fail", missing.format("set_grads")),
            MISSING_GRADS: ("fail", missing.format("get_grads")),
        },
    )

    class OnlyGetters(OnlyForward):
        def features(self, x: Tensor) -> Tensor:
            return self.body.features(x)

        def get_params(self) -> Tensor:
            return self.body.get_params()

        def get_grads(self) -> Tensor:
            return self.body.get_grads()

    assert_outcome(
        OnlyGetters(),
        {
            HEAD: ("skip", "the backbone has no forward_features and forward_head"),
            CLASSIFIER: ("skip", "the backbone has no classifier attribute"),
            FEATURE_DIM: ("skip", "the backbone has no feature_dim attribute"),
            SET_PARAMS: ("fail", missing.format("set_params")),
            IDENTITY: ("fail", missing.format("set_params")),
            PARAMS_COPIED: ("fail", missing.format("set_params")),
            SET_GRADS: ("fail", missing.format("set_grads")),
            GRADS_COPIED: ("fail", missing.format("set_grads")),
            GRADS_NONE_OR_NOT: ("fail", missing.format("set_grads")),
        },
    )


def test_a_get_params_that_changes_length_after_set_params_is_reported() -> None:
    class Shrinks(Marking):
        def set_params(self, new_params: Tensor) -> None:
            super().set_params(new_params)
            self.mark("written")

        def get_params(self, *, out: Tensor | None = None) -> Tensor:
            params = super().get_params()
            return params[:-2] if self.marked("written") else params

    assert_outcome(
        seeded(Shrinks()),
        {
            SET_PARAMS: (
                "fail",
                f"get_params() should be 1-D of {NUMEL} (one element per parameter element), got Tensor of shape (33,)",
            )
        },
    )

    class GradsShrink(Marking):
        def set_grads(self, new_grads: Tensor) -> None:
            super().set_grads(new_grads)
            self.mark("written")

        def get_grads(self, *, out: Tensor | None = None) -> Tensor:
            grads = super().get_grads()
            return grads[:-2] if self.marked("written") else grads

    assert_outcome(
        seeded(GradsShrink()),
        {
            SET_GRADS: (
                "fail",
                f"get_grads() should be 1-D of {NUMEL} (one element per parameter element), got Tensor of shape (33,)",
            )
        },
    )


def test_a_set_return_prerelu_without_a_return_prerelu_attribute_is_switched_off_afterwards() -> None:
    """Without ``return_prerelu`` to read, the switch is taken to have been off, and is put back off."""

    class OtherName(Prerelu):
        def __init__(self) -> None:
            super().__init__()
            del self.return_prerelu
            self.pre = False

        def set_return_prerelu(self, enable: bool = True) -> None:
            self.toggles.append(enable)
            self.pre = enable

        def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
            self.return_prerelu = self.pre
            try:
                return super().forward(x, returnt)
            finally:
                del self.return_prerelu

    net = seeded(OtherName())
    assert_outcome(net, {}, x=prerelu_batch(), prerelu=("pass", ""))
    assert net.toggles == [True, False] and net.pre is False


def test_the_gradients_come_from_returnt_out() -> None:
    """A backbone that insists on an explicit returnt only breaks the rule about the default."""

    class ExplicitOnly(TinyNet):
        def forward(self, x: Tensor, returnt: str | None = None):  # type: ignore[no-untyped-def, override]
            if returnt is None:
                raise RuntimeError("say which returnt")
            return super().forward(x, returnt)  # type: ignore[arg-type]

    assert_outcome(seeded(ExplicitOnly()), {OUT: ("fail", "forward(x) raised RuntimeError: say which returnt")})


def test_an_unchanged_stage_of_small_relu_values_is_still_a_relu_output() -> None:
    def small(logits: Tensor, stages: list[Tensor], pre: bool) -> tuple[Tensor, list[Tensor]]:
        after = stages[1].relu()
        return logits, [stages[0], after / (2 * after.max())]  # zeros and positive values, none above 0.5

    assert prerelu_outcome(small) == (
        "fail",
        "stage 1 is unchanged and looks like a ReLU output (no negative values, some zeros and some positive ones); "
        "set_return_prerelu(True) should give it before its activation",
    )


def test_parameters_that_are_views_of_one_flat_vector_stay_views_of_it() -> None:
    """Values are put back in place: a parameter sharing its memory with a flat vector keeps sharing it."""
    net = seeded(TinyNet())
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    offset = 0
    for p in net.parameters():
        p.data = flat[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    grads = torch.zeros(NUMEL)
    offset = 0
    for p in net.parameters():
        p.grad = grads[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    before = flat.clone()
    assert_outcome(net, {})
    assert torch.equal(flat, before) and not bool(grads.any())
    with torch.no_grad():
        flat.add_(1)
        grads.add_(2)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in net.parameters()]), before + 1)
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in net.parameters()]), torch.full((NUMEL,), 2.0))  # type: ignore[union-attr]


def test_a_permuted_layout_shows_even_in_bfloat16() -> None:
    """The checker writes distinct values; two neighbours swapped must show, in the coarsest dtype too."""

    class Swaps(TinyNet):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i = i

        def set_params(self, new_params: Tensor) -> None:
            swapped = new_params.clone()
            swapped[[self.i, self.i + 1]] = new_params[[self.i + 1, self.i]]
            super().set_params(swapped)

    x = batch().to(torch.bfloat16)
    # Loose enough for bfloat16 rounding, tight enough that swapping two neighbours a distance of 1 apart fails.
    assert_outcome(seeded(TinyNet()).to(torch.bfloat16), {}, x=x, rtol=0.01, atol=0.05)
    for i in (0, 1, 12, NUMEL - 2):
        assert_outcome(
            seeded(Swaps(i)).to(torch.bfloat16),
            {SET_PARAMS: ("fail", differs("each parameter after set_params(v) and its slice of v"))},
            x=x,
            rtol=0.01,
            atol=0.05,
        )


def test_a_set_params_that_freezes_parameters_is_undone_by_the_check() -> None:
    class Freezing(TinyNet):
        def set_params(self, new_params: torch.Tensor) -> None:
            super().set_params(new_params)
            self.stage1.requires_grad_(False)

    net = Freezing()
    check_backbone(net, torch.randn(3, 4))
    assert all(p.requires_grad for p in net.parameters())
