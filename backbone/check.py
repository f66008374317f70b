"""Check a backbone against the contract that methods rely on."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

__all__ = ["ContractError", "RuleResult", "check_backbone"]

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule of :func:`check_backbone`.

    Attributes:
        rule: what the rule requires, in a few words.
        status: ``'pass'``, ``'fail'``, or ``'skip'`` (the rule does not apply,
            for example ``feature_dim`` on a backbone that does not set it).
        detail: why it failed or was skipped; empty when it passed.

    Example:
        >>> from backbone import RuleResult
        >>> RuleResult("returnt='out' gives logits [B, C]", "pass").passed
        True
    """

    rule: str
    status: Status
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the rule did not fail (a skipped rule did not fail).

        Example:
            >>> from backbone import RuleResult
            >>> RuleResult("feature_dim equals D", "skip", "no feature_dim").passed
            True
        """
        return self.status != "fail"


class ContractError(AssertionError):
    """Raised by :func:`check_backbone`, listing every rule the backbone broke.

    Attributes:
        results: every rule's outcome, the passing ones included.

    Example:
        >>> from backbone import ContractError, RuleResult
        >>> error = ContractError([RuleResult("an unknown returnt raises ValueError", "fail", "returned a Tensor")])
        >>> print(error)
        1 of 1 rules broken:
          - an unknown returnt raises ValueError: returned a Tensor
    """

    def __init__(self, results: list[RuleResult]) -> None:
        self.results = results
        failures = [r for r in results if not r.passed]
        lines = [f"{len(failures)} of {len(results)} rules broken:"]
        lines += [f"  - {r.rule}: {r.detail}" for r in failures]
        super().__init__("\n".join(lines))


class _Fail(Exception):
    """A rule's own verdict, as opposed to an error raised by the backbone."""


class _Skip(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Fail(message)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value[:6])
        more = ", ..." if len(value) > 6 else ""
        return f"{type(value).__name__} of {len(value)} ({inner}{more})"
    return type(value).__name__


def _tensor(value: object, what: str, batch: int, dim: int | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise _Fail(f"{what} should be a Tensor, got {_describe(value)}")
    _require(
        value.dim() >= 1 and value.shape[0] == batch,
        f"{what} should have batch dimension {batch}, got shape {tuple(value.shape)}",
    )
    if dim is not None:
        _require(value.dim() == dim, f"{what} should be {dim}-D, got shape {tuple(value.shape)}")
    return value


class _Checker:
    def __init__(self, net: nn.Module, x: Tensor, rtol: float, atol: float) -> None:
        self.net, self.x, self.rtol, self.atol = net, x, rtol, atol
        self.batch = x.shape[0]
        self._out: Tensor | None = None
        self._features: Tensor | None = None

    def close(self, a: Tensor, b: Tensor, what: str) -> None:
        _require(a.shape == b.shape, f"{what}: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
        if not torch.allclose(a.double(), b.double(), rtol=self.rtol, atol=self.atol):
            diff = (a.double() - b.double()).abs().max().item()
            raise _Fail(f"{what}: values differ (largest difference {diff:.3g})")

    def out(self) -> Tensor:
        if self._out is None:
            with torch.no_grad():
                self._out = _tensor(self.net(self.x, returnt="out"), "returnt='out'", self.batch, dim=2)
        return self._out

    def features(self) -> Tensor:
        if self._features is None:
            with torch.no_grad():
                self._features = _tensor(self.net(self.x, returnt="features"), "returnt='features'", self.batch, dim=2)
        return self._features

    # Each rule returns nothing when it holds, raises _Fail or _Skip otherwise.

    def rule_out(self) -> None:
        out = self.out()
        with torch.no_grad():
            default = self.net(self.x)
        _tensor(default, "the default returnt", self.batch)
        self.close(default, out, "the default returnt and returnt='out'")

    def rule_features(self) -> None:
        self.features()

    def rule_both(self) -> None:
        with torch.no_grad():
            both = self.net(self.x, returnt="both")
        _require(
            isinstance(both, tuple) and len(both) == 2, f"should be a tuple (logits, features), got {_describe(both)}"
        )
        logits = _tensor(both[0], "its logits", self.batch)
        features = _tensor(both[1], "its features", self.batch)
        self.close(logits, self.out(), "its logits and returnt='out'")
        self.close(features, self.features(), "its features and returnt='features'")

    def rule_full(self) -> None:
        with torch.no_grad():
            full = self.net(self.x, returnt="full")
        _require(
            isinstance(full, tuple) and len(full) == 2,
            f"should be a tuple (logits, [stage outputs]), got {_describe(full)}",
        )
        logits = _tensor(full[0], "its logits", self.batch)
        stages = full[1]
        _require(
            isinstance(stages, list), f"its second element should be a list of stage outputs, got {_describe(stages)}"
        )
        _require(len(stages) > 0, "its list of stage outputs is empty")
        for i, stage in enumerate(stages):
            _tensor(stage, f"stage {i}", self.batch)
        self.close(logits, self.out(), "its logits and returnt='out'")

    def rule_features_method(self) -> None:
        with torch.no_grad():
            features = _tensor(self._method("features")(self.x), "features(x)", self.batch)
        self.close(features, self.features(), "features(x) and returnt='features'")

    def rule_unknown_returnt(self) -> None:
        try:
            with torch.no_grad():
                result = self.net(self.x, returnt="not-a-returnt")
        except ValueError:
            return
        except Exception as error:
            raise _Fail(f"raised {type(error).__name__} instead of ValueError: {error}") from None
        raise _Fail(f"returned {_describe(result)} instead of raising ValueError")

    def rule_classifier(self) -> None:
        classifier = getattr(self.net, "classifier", None)
        if classifier is None:
            raise _Skip("the backbone has no classifier attribute")
        _require(callable(classifier), f"classifier should be a module, got {type(classifier).__name__}")
        with torch.no_grad():
            logits = classifier(self.features())
        self.close(
            _tensor(logits, "classifier(features)", self.batch), self.out(), "classifier(features) and the logits"
        )

    def rule_feature_dim(self) -> None:
        feature_dim = getattr(self.net, "feature_dim", None)
        if feature_dim is None:
            raise _Skip("the backbone has no feature_dim attribute")
        actual = self.features().shape[1]
        _require(
            isinstance(feature_dim, int) and feature_dim == actual,
            f"feature_dim is {feature_dim!r} but the features have D = {actual}",
        )

    def _method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.net, name, None)
        _require(callable(method), f"the backbone has no {name}() method (inherit from MammothBackbone)")
        return cast(Callable[..., Any], method)

    def rule_params_round_trip(self) -> None:
        get_params, set_params = self._method("get_params"), self._method("set_params")
        numel = sum(p.numel() for p in self.net.parameters())
        flat = get_params()
        _require(
            isinstance(flat, Tensor) and flat.shape == (numel,),
            f"get_params() should be 1-D of {numel}, got {_describe(flat)}",
        )
        flat = flat.detach().clone()
        set_params(flat + 1)
        self.close(get_params().detach(), flat + 1, "get_params() after set_params(v)")
        set_params(flat)
        with torch.no_grad():
            self.close(self.net(self.x, returnt="out"), self.out(), "the logits after a params round-trip")

    def rule_grads_round_trip(self) -> None:
        get_grads, set_grads = self._method("get_grads"), self._method("set_grads")
        numel = sum(p.numel() for p in self.net.parameters())
        self.net.zero_grad(set_to_none=True)
        self.net(self.x, returnt="out").double().sum().backward()
        pieces = [
            torch.zeros(p.numel()) if p.grad is None else p.grad.detach().reshape(-1).double().cpu()
            for p in self.net.parameters()
        ]
        expected = torch.cat(pieces) if pieces else torch.zeros(0)
        grads = get_grads()
        _require(
            isinstance(grads, Tensor) and grads.shape == (numel,),
            f"get_grads() should be 1-D of {numel}, got {_describe(grads)}",
        )
        self.close(grads.cpu(), expected, "get_grads() and the parameters' .grad")
        grads = grads.detach().clone()
        set_grads(grads * 2)
        self.close(get_grads(), grads * 2, "get_grads() after set_grads(v)")
        set_grads(grads)
        with torch.no_grad():
            self.close(self.net(self.x, returnt="out"), self.out(), "the logits after a grads round-trip")

    def rule_float64(self) -> None:
        try:
            twin = copy.deepcopy(self.net)
        except Exception as error:
            raise _Skip(f"the backbone cannot be deep-copied, so to() was not tried on it: {error}") from None
        moved = twin.to(torch.float64)
        _require(moved is twin, f"to() should return the backbone itself, got {_describe(moved)}")
        wrong = [name for name, p in twin.named_parameters() if p.is_floating_point() and p.dtype != torch.float64]
        _require(not wrong, f"parameters not converted to float64: {', '.join(wrong[:5])}")
        x = self.x.double() if self.x.is_floating_point() else self.x
        with torch.no_grad():
            out = _tensor(twin(x, returnt="out"), "the float64 logits", self.batch)
        _require(out.dtype == torch.float64, f"the logits should be float64 after to(torch.float64), got {out.dtype}")
        self.close(out, self.out(), "the float64 and original logits")


_RULES: list[tuple[str, Callable[[_Checker], None]]] = [
    ("returnt='out' gives logits [B, C], the default", _Checker.rule_out),
    ("returnt='features' gives features [B, D]", _Checker.rule_features),
    ("returnt='both' gives (logits, features) that agree", _Checker.rule_both),
    ("returnt='full' gives (logits, [stage outputs])", _Checker.rule_full),
    ("features(x) equals returnt='features'", _Checker.rule_features_method),
    ("an unknown returnt raises ValueError", _Checker.rule_unknown_returnt),
    ("classifier(features) gives the logits", _Checker.rule_classifier),
    ("feature_dim equals D", _Checker.rule_feature_dim),
    ("set_params(get_params()) round-trips", _Checker.rule_params_round_trip),
    ("set_grads(get_grads()) round-trips", _Checker.rule_grads_round_trip),
    ("to(torch.float64) converts the backbone", _Checker.rule_float64),
]


@contextmanager
def _preserved(net: nn.Module) -> Iterator[None]:
    """Restore modes, parameter values, gradients and buffers on exit."""
    modes = [(m, m.training) for m in net.modules()]
    params = [
        (p, p.detach().clone(), p.grad, None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()
    ]
    buffers = [(b, b.clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, training in modes:
                module.training = training
            for p, value, grad, grad_value in params:
                p.copy_(value)
                if grad is not None and grad_value is not None:
                    grad.copy_(grad_value)
                p.grad = grad
            for b, value in buffers:
                b.copy_(value)


def check_backbone(
    net: nn.Module, example_input: Tensor, *, rtol: float = 1e-4, atol: float = 1e-5
) -> list[RuleResult]:
    """Check ``net`` against the backbone contract, on ``example_input``.

    Every rule runs, in eval mode, even after one fails:

    * each ``returnt`` value returns the documented type with batch dimension
      ``B``, and the four agree with each other; ``features(x)`` agrees too;
    * an unknown ``returnt`` raises :class:`ValueError`;
    * ``classifier(features)`` gives the logits and ``feature_dim`` equals
      ``D``, where the backbone sets them;
    * ``set_params``/``get_params`` and ``set_grads``/``get_grads`` round-trip
      and leave the outputs unchanged;
    * ``to(torch.float64)`` converts the backbone (tried on a deep copy).

    The backbone is left as it was found: training mode, parameters,
    gradients, buffers and dtype.

    Args:
        net: the backbone.
        example_input: a batch it accepts, batch dimension first.
        rtol: relative tolerance for outputs that must agree.
        atol: absolute tolerance for outputs that must agree.

    Returns:
        Every rule's result, when none failed.

    Raises:
        ContractError: a rule failed; the error lists every failed rule and
            carries all results in ``results``.
        TypeError: ``net`` is not a module or ``example_input`` not a tensor.
        ValueError: ``example_input`` has no batch dimension.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, check_backbone
        >>> results = check_backbone(MNISTMLP(784, 10), torch.randn(4, 784))
        >>> all(r.passed for r in results), len(results)
        (True, 11)
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise ValueError(f"example_input must have a non-empty batch dimension, got shape {tuple(example_input.shape)}")
    results = []
    with _preserved(net):
        net.eval()
        checker = _Checker(net, example_input, rtol, atol)
        for rule, run in _RULES:
            results.append(_run_rule(rule, run, checker))
    if not all(r.passed for r in results):
        raise ContractError(results)
    return results


def _run_rule(rule: str, run: Callable[[_Checker], None], checker: _Checker) -> RuleResult:
    try:
        # A rule that fails half-way must not leave its changes to the next one.
        with _preserved(checker.net):
            run(checker)
    except _Fail as verdict:
        return RuleResult(rule, "fail", str(verdict))
    except _Skip as reason:
        return RuleResult(rule, "skip", str(reason))
    except Exception as error:
        return RuleResult(rule, "fail", f"raised {type(error).__name__}: {error}")
    return RuleResult(rule, "pass")
