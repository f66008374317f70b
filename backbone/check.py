"""Check a backbone against the contract that methods rely on."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from .wrappers import compiled_original

__all__ = ["CONTRACT_RULES", "ContractError", "RuleResult", "check_backbone"]

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule of :func:`check_backbone`.

    Attributes:
        rule: what the rule requires, in a few words.
        status: ``'pass'``, ``'fail'``, or ``'skip'``: the rule does not
            apply (for example ``feature_dim`` on a backbone that does not
            set it), so it was not verified.
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
        """Whether the rule did not fail; a skipped rule did not fail, but was not verified either.

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
        backbone: the name of the backbone's class, when known.

    A ``hint``, when given, is the message's last line (the checker gives one
    for a plain timm or torchvision model: the adapter to wrap it with).

    Example:
        >>> from backbone import ContractError, RuleResult
        >>> error = ContractError([RuleResult("an unknown returnt raises ValueError", "fail", "returned a Tensor")])
        >>> print(error)
        1 of 1 rules broken:
          - an unknown returnt raises ValueError: returned a Tensor
    """

    def __init__(self, results: list[RuleResult], backbone: str | None = None, hint: str = "") -> None:
        self.results = results
        self.backbone = backbone
        failures = [r for r in results if not r.passed]
        lines = [f"{backbone + ': ' if backbone else ''}{len(failures)} of {len(results)} rules broken:"]
        lines += [f"  - {r.rule}: {r.detail}" for r in failures]
        if hint:
            lines.append(hint)
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


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Report an error the backbone raises in the block as a failure naming the call that raised it."""
    try:
        yield
    except (_Fail, _Skip):
        raise
    except Exception as error:
        raise _Fail(f"{what} raised {type(error).__name__}: {error}") from None


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
                self._out = _tensor(self._forward("out"), "returnt='out'", self.batch, dim=2)
        return self._out

    def features(self) -> Tensor:
        if self._features is None:
            with torch.no_grad():
                self._features = _tensor(self._forward("features"), "returnt='features'", self.batch, dim=2)
        return self._features

    # Each rule returns nothing when it holds, raises _Fail or _Skip otherwise.

    def rule_out(self) -> None:
        out = self.out()
        with torch.no_grad(), _calling("forward(x)"):
            default = self.net(self.x)
        _tensor(default, "the default returnt", self.batch)
        self.close(default, out, "the default returnt and returnt='out'")

    def rule_out_is_the_head(self) -> None:
        forward_features = getattr(self.net, "forward_features", None)
        forward_head = getattr(self.net, "forward_head", None)
        if not (callable(forward_features) and callable(forward_head)):
            raise _Skip("the backbone has no forward_features and forward_head")
        with torch.no_grad():
            try:
                final = forward_features(self.x)
            except NotImplementedError:
                raise _Skip("the backbone writes its own forward and does not implement forward_features") from None
            except Exception as error:
                raise _Fail(f"forward_features(x) raised {type(error).__name__}: {error}") from None
            with _calling("forward_head(forward_features(x))"):
                head = forward_head(final)
            logits = _tensor(head, "forward_head(forward_features(x))", self.batch)
        self.close(logits, self.out(), "forward_head(forward_features(x)) and returnt='out'")

    def rule_features(self) -> None:
        self.features()

    def rule_both(self) -> None:
        with torch.no_grad():
            both = self._forward("both")
        _require(
            isinstance(both, tuple) and len(both) == 2, f"should be a tuple (logits, features), got {_describe(both)}"
        )
        logits = _tensor(both[0], "its logits", self.batch)
        features = _tensor(both[1], "its features", self.batch)
        self.close(logits, self.out(), "its logits and returnt='out'")
        self.close(features, self.features(), "its features and returnt='features'")

    def rule_full(self) -> None:
        with torch.no_grad():
            full = self._forward("full")
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
            features = self.features()
            with _calling("classifier(features)"):
                logits = classifier(features)
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

    def _forward(self, returnt: str) -> Any:
        with _calling(f"forward(x, returnt={returnt!r})"):
            return self.net(self.x, returnt=returnt)

    def _method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.net, name, None)
        _require(callable(method), f"the backbone has no {name}() method (inherit from MammothBackbone)")

        def call(*args: Any) -> Any:
            # The rule's detail names the call that raised, not only the rule it was part of.
            with _calling(f"{name}()"):
                return cast(Callable[..., Any], method)(*args)

        return call

    def _flat(self, value: object, what: str) -> Tensor:
        numel = sum(p.numel() for p in self.net.parameters())
        _require(
            isinstance(value, Tensor) and value.shape == (numel,),
            f"{what} should be 1-D of {numel} (one element per parameter element), got {_describe(value)}",
        )
        return cast(Tensor, value)

    def _pattern(self, like: Tensor) -> Tensor:
        # Small integers, exact in every dtype down to bfloat16, repeating
        # every 199 elements: a permuted or shifted layout shows unless it
        # moves every element by a multiple of 199.
        return (torch.arange(like.numel(), device=like.device) % 199 + 1).to(like.dtype)

    def _each(self, read: Callable[[nn.Parameter], Tensor | None]) -> Tensor:
        """One value per parameter (zeros for None), concatenated in parameters() order, as float64 on the CPU."""
        pieces = [
            torch.zeros(p.numel(), dtype=torch.float64) if t is None else t.detach().reshape(-1).double().cpu()
            for p in self.net.parameters()
            for t in [read(p)]
        ]
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)

    def rule_grads_none_or_not(self) -> None:
        set_grads = self._method("set_grads")
        params = list(self.net.parameters())
        if not params:
            raise _Skip("the backbone has no parameters")
        # The vector is made from the parameters themselves, so that this rule tests set_grads alone.
        target = self._pattern(
            torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        )
        # After zero_grad() (every .grad None, torch's default), with every .grad a tensor, and mixed (a branch
        # a backward did not reach): A-GEM's zero_grad(); set_grads(g); step() needs the first.
        for state in ("were None", "existed", "were None for every other parameter"):
            for i, p in enumerate(params):
                exists = state == "existed" or (state != "were None" and i % 2 == 1)
                p.grad = torch.zeros_like(p) if exists else None
            set_grads(target)
            missing = [name for name, p in self.net.named_parameters() if p.grad is None]
            _require(
                not missing,
                f"set_grads(v) left .grad None where the gradients {state}: {', '.join(missing[:5])} "
                "(set_grads must create a missing .grad, not only write the existing ones)",
            )
            self.close(
                self._each(lambda p: p.grad),
                target.cpu(),
                f"each parameter's .grad after set_grads(v), where the gradients {state}, and its slice of v",
            )

    def rule_params_round_trip(self) -> None:
        get_params, set_params = self._method("get_params"), self._method("set_params")
        flat = self._flat(get_params(), "get_params()").detach().clone()
        self.close(flat.cpu(), self._each(lambda p: p), "get_params() and the parameters in parameters() order")
        target = self._pattern(flat)
        set_params(target)
        self.close(self._each(lambda p: p), target.cpu(), "each parameter after set_params(v) and its slice of v")
        self.close(
            self._flat(get_params(), "get_params()").detach().cpu(), target.cpu(), "get_params() after set_params(v)"
        )
        set_params(flat)
        with torch.no_grad():
            self.close(self._forward("out"), self.out(), "the logits after set_params(get_params())")

    def rule_params_copied(self) -> None:
        get_params, set_params = self._method("get_params"), self._method("set_params")
        vector = self._pattern(self._flat(get_params(), "get_params()").detach())
        set_params(vector)
        written = self._each(lambda p: p)
        with torch.no_grad():
            vector.add_(1000)
        self.close(
            self._each(lambda p: p),
            written,
            "the parameters before and after the vector given to set_params(v) changed (set_params must copy v, "
            "not make the parameters views of it)",
        )

    def rule_grads_copied(self) -> None:
        get_grads, set_grads = self._method("get_grads"), self._method("set_grads")
        vector = self._pattern(self._flat(get_grads(), "get_grads()").detach())
        set_grads(vector)
        written = self._each(lambda p: p.grad)
        with torch.no_grad():
            vector.add_(1000)
        self.close(
            self._each(lambda p: p.grad),
            written,
            "the .grad of each parameter before and after the vector given to set_grads(v) changed (set_grads must "
            "copy v, not make the gradients views of it)",
        )

    def rule_missing_grads(self) -> None:
        get_grads = self._method("get_grads")
        self.net.zero_grad(set_to_none=True)
        params = list(self.net.parameters())
        if not params:
            raise _Skip("the backbone has no parameters")
        grads = self._flat(get_grads(), "get_grads() with every .grad None").detach().cpu()
        self.close(grads.double(), torch.zeros_like(grads, dtype=torch.float64), "get_grads() with every .grad None")
        get_grads_list = getattr(self.net, "get_grads_list", None)
        if callable(get_grads_list):
            entries = get_grads_list()
            _require(
                isinstance(entries, list) and len(entries) == len(params),
                "get_grads_list() with every .grad None should give one tensor per parameter, "
                f"got {_describe(entries)}",
            )
            for p, entry in zip(params, entries, strict=True):
                _require(
                    isinstance(entry, Tensor) and entry.numel() == p.numel() and not bool(entry.detach().any()),
                    "get_grads_list() with every .grad None should give zeros for each parameter",
                )

    def rule_params_identity(self) -> None:
        get_params, set_params = self._method("get_params"), self._method("set_params")
        before = list(self.net.parameters())
        set_params(self._flat(get_params(), "get_params()").detach().clone())
        after = list(self.net.parameters())
        replaced = [name for (name, p), q in zip(self.net.named_parameters(), before, strict=False) if p is not q] or [
            "(the number of parameters changed)"
        ] * (len(before) != len(after))
        _require(
            not replaced,
            f"set_params replaced the Parameter objects {', '.join(replaced[:5])}; an optimizer built before "
            "would no longer update them (copy into the parameters in place instead)",
        )

    def rule_params_differentiable(self) -> None:
        get_params, get_grads = self._method("get_params"), self._method("get_grads")
        params = list(self.net.parameters())
        if not any(p.requires_grad for p in params):
            raise _Skip("no parameter requires grad, so there is nothing to differentiate")
        self.net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            flat = self._flat(get_params(), "get_params()")
            _require(
                flat.requires_grad,
                "get_params() is detached from the parameters; a penalty built from it (EWC) sends them no gradient",
            )
            weights = self._pattern(flat)
            torch.autograd.backward((flat * weights).sum())
        expected = torch.cat(
            [
                w if p.requires_grad else torch.zeros_like(w)
                for p, w in zip(
                    params, torch.split(weights.detach().double().cpu(), [p.numel() for p in params]), strict=True
                )
            ]
        )
        self.close(
            self._each(lambda p: p.grad), expected, "the .grad of each parameter after backward through get_params()"
        )
        self.close(
            self._flat(get_grads(), "get_grads()").cpu(), expected, "get_grads() after backward through get_params()"
        )

    def rule_grads_round_trip(self) -> None:
        get_grads, set_grads = self._method("get_grads"), self._method("set_grads")
        self.net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = self._forward("out")
            if isinstance(out, Tensor) and out.requires_grad:
                torch.autograd.backward(out.double().sum())
        grads = self._flat(get_grads(), "get_grads()").detach().clone()
        self.close(grads.cpu(), self._each(lambda p: p.grad), "get_grads() and the parameters' .grad")
        target = self._pattern(grads)
        set_grads(target)
        self.close(
            self._each(lambda p: p.grad), target.cpu(), "each parameter's .grad after set_grads(v) and its slice of v"
        )
        self.close(self._flat(get_grads(), "get_grads()").cpu(), target.cpu(), "get_grads() after set_grads(v)")
        set_grads(grads)
        with torch.no_grad():
            self.close(self._forward("out"), self.out(), "the logits after a grads round-trip")

    def rule_prerelu(self) -> None:
        toggle = getattr(self.net, "set_return_prerelu", None)
        if not callable(toggle):
            raise _Skip("the backbone has no set_return_prerelu")
        was = bool(getattr(self.net, "return_prerelu", False))
        with torch.no_grad():
            logits, post = self._full("returnt='full'")
            try:
                toggle(True)
                pre_logits, pre = self._full("returnt='full' after set_return_prerelu(True)")
            finally:
                toggle(was)
        self.close(pre_logits, logits, "the logits with and without set_return_prerelu(True)")
        _require(len(pre) == len(post), f"{len(pre)} pre-activation stages for {len(post)} stages")
        for i, (a, b) in enumerate(zip(pre, post, strict=True)):
            _require(a.shape == b.shape, f"stage {i}: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
            if torch.equal(a, b):
                # Allowed only where no activation follows the stage: a ReLU
                # output has no negative values, so a stage that has some is
                # genuinely unchanged. One with none but zeros and positive
                # values was probably not switched, unless it has some in
                # training mode; an all-zero stage (a zero input, say) cannot
                # tell either way.
                _require(
                    bool((a < 0).any())
                    or not bool((a == 0).any())
                    or not bool((a > 0).any())
                    or self._negative_in_training(toggle, i),
                    f"stage {i} is unchanged and looks like a ReLU output (no negative values, some zeros and "
                    "some positive ones); set_return_prerelu(True) should give it before its activation",
                )
            else:
                self.close(a.relu(), b, f"stage {i}: relu of the pre-activation output and the output")

    def _negative_in_training(self, toggle: Callable[[bool], object], index: int) -> bool:
        """Whether 'full' stage ``index``, pre-activations on, has negative values in training mode.

        A stage that ends in ReLU then BatchNorm (the CIFAR ResNet-32's stem)
        is, in eval mode with BatchNorm's initial statistics, a ReLU output
        scaled by a positive number; the batch statistics of training mode
        show that it is not one. A ReLU output has no negative values in
        either mode, so a set_return_prerelu that does nothing still fails.
        Whatever the probe changes (modes, statistics, the switch) is put back.
        """
        was = bool(getattr(self.net, "return_prerelu", False))
        devices = [self.x.device] if self.x.device.type == "cuda" else []
        try:
            # Random numbers drawn in training mode (dropout) are given back too.
            with _preserved(self.net), torch.no_grad(), torch.random.fork_rng(devices=devices):
                toggle(True)
                self.net.train()
                _, stages = self._full("returnt='full' in training mode")
                return index < len(stages) and bool((stages[index] < 0).any())
        except Exception:
            # A backbone that cannot run this batch in training mode (batch norm over a single value per
            # channel) leaves the question open, as an all-zero stage does: not a failure.
            return True
        finally:
            toggle(was)

    def _full(self, what: str) -> tuple[Tensor, list[Tensor]]:
        full = self.net(self.x, returnt="full")
        _require(
            isinstance(full, tuple) and len(full) == 2 and isinstance(full[1], list),
            f"{what} should be (logits, [stages]), got {_describe(full)}",
        )
        return full[0], full[1]

    def rule_float64(self) -> None:
        try:
            twin = copy.deepcopy(self.net)
        except Exception as error:
            raise _Skip(f"the backbone cannot be deep-copied, so to() was not tried on it: {error}") from None
        with _calling("to(torch.float64)"):
            moved = twin.to(torch.float64)
        _require(moved is twin, f"to() should return the backbone itself, got {_describe(moved)}")
        wrong = [name for name, p in twin.named_parameters() if p.is_floating_point() and p.dtype != torch.float64]
        _require(not wrong, f"parameters not converted to float64: {', '.join(wrong[:5])}")
        x = self.x.double() if self.x.is_floating_point() else self.x
        with torch.no_grad():
            with _calling("forward(x, returnt='out') after to(torch.float64)"):
                out = twin(x, returnt="out")
            out = _tensor(out, "the float64 logits", self.batch)
        _require(out.dtype == torch.float64, f"the logits should be float64 after to(torch.float64), got {out.dtype}")
        self.close(out, self.out(), "the float64 and original logits")


_RULES: tuple[tuple[str, Callable[[_Checker], None]], ...] = (
    ("returnt='out' gives logits [B, C], the default", _Checker.rule_out),
    ("returnt='out' equals forward_head(forward_features(x))", _Checker.rule_out_is_the_head),
    ("returnt='features' gives features [B, D]", _Checker.rule_features),
    ("returnt='both' gives (logits, features) that agree", _Checker.rule_both),
    ("returnt='full' gives (logits, [stage outputs]) with the same logits", _Checker.rule_full),
    ("features(x) equals returnt='features'", _Checker.rule_features_method),
    ("an unknown returnt raises ValueError", _Checker.rule_unknown_returnt),
    ("classifier(features) gives the logits", _Checker.rule_classifier),
    ("feature_dim equals D", _Checker.rule_feature_dim),
    ("set_params(v) writes v in parameters() order and round-trips", _Checker.rule_params_round_trip),
    ("set_params keeps the Parameter objects", _Checker.rule_params_identity),
    ("set_params(v) copies v: changing v afterwards changes no parameter", _Checker.rule_params_copied),
    ("get_params() is differentiable, laid out like get_grads()", _Checker.rule_params_differentiable),
    ("set_grads(v) writes v into .grad in parameters() order and round-trips", _Checker.rule_grads_round_trip),
    ("set_grads(v) copies v: changing v afterwards changes no .grad", _Checker.rule_grads_copied),
    ("set_grads(v) fills every .grad, None or not", _Checker.rule_grads_none_or_not),
    ("get_grads() reads a missing .grad as zeros", _Checker.rule_missing_grads),
    ("to(torch.float64) converts the backbone", _Checker.rule_float64),
    ("set_return_prerelu(True) gives each stage before its activation", _Checker.rule_prerelu),
)

CONTRACT_RULES: tuple[str, ...] = tuple(rule for rule, _ in _RULES)
"""What :func:`check_backbone` verifies, one line per rule, in the order it checks them.

This tuple is the one list of rules: the checker runs them, the command line
and the docs count them from here.

Example:
    >>> from backbone import CONTRACT_RULES
    >>> CONTRACT_RULES[0]
    "returnt='out' gives logits [B, C], the default"
"""


@contextmanager
def _preserved(net: nn.Module) -> Iterator[None]:
    """Restore on exit everything a forward or a flat operation can change.

    Training modes; the parameter, buffer and tensor-attribute objects of
    every module (reassigned ones put back, added ones removed) and their
    values; each parameter's ``.grad`` object and value, and its
    ``requires_grad``.
    """
    modules = list(net.modules())
    modes = [(m, m.training) for m in modules]
    slots: list[tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Tensor]]] = [
        (m, dict(m._parameters), dict(m._buffers), _tensor_attributes(m)) for m in modules
    ]
    values = {
        id(t): (t, t.detach().clone())
        for _, *dicts in slots
        for d in dicts
        for t in d.values()
        if isinstance(t, Tensor)
    }
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()]
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, training in modes:
                module.training = training
            for module, parameters, buffers, attributes in slots:
                module._parameters.clear()
                module._parameters.update(parameters)
                module._buffers.clear()
                module._buffers.update(buffers)
                for name in _tensor_attributes(module).keys() - attributes.keys():
                    del module.__dict__[name]
                module.__dict__.update(attributes)
            for t, value in values.values():
                _put_back(t, value)
            for p, grad, grad_value in grads:
                if grad is not None and grad_value is not None:
                    _put_back(grad, grad_value)
                p.grad = grad
            for p, requires_grad in flags:
                if p.requires_grad != requires_grad and p.is_leaf:
                    p.requires_grad_(requires_grad)


def _tensor_attributes(module: nn.Module) -> dict[str, Tensor]:
    return {name: value for name, value in vars(module).items() if isinstance(value, Tensor)}


def _put_back(t: Tensor, value: Tensor) -> None:
    if t.shape != value.shape or t.dtype != value.dtype or t.device != value.device:
        t.data = value
    elif not torch.equal(t, value):
        t.copy_(value)


def check_backbone(
    net: nn.Module, example_input: Tensor, *, rtol: float = 1e-4, atol: float = 1e-5
) -> list[RuleResult]:
    """Check ``net`` against the backbone contract, on ``example_input``.

    Every rule of :data:`~backbone.CONTRACT_RULES` runs, in eval mode, even after one
    fails:

    * each ``returnt`` value returns the documented type with batch dimension
      ``B``, and the four agree with each other; ``features(x)`` agrees too;
    * an unknown ``returnt`` raises :class:`ValueError`;
    * ``classifier(features)`` gives the logits and ``feature_dim`` equals
      ``D``, where the backbone sets them;
    * ``set_params`` writes each parameter's slice of the vector in place
      (the Parameter objects stay the same), ``get_params`` is
      differentiable and laid out like ``get_grads``, ``set_grads`` writes
      each ``.grad``'s slice, and the round-trips leave the outputs unchanged;
    * ``to(torch.float64)`` converts the backbone (tried on a deep copy);
    * where the backbone has ``set_return_prerelu``, switching it on keeps
      the logits and gives each ``'full'`` stage before its activation (the
      same shapes, and the ReLU of each is the stage as before), and it is
      switched back afterwards. A stage given unchanged that looks like a
      ReLU output is run once more in training mode, where BatchNorm uses
      the batch's statistics: it passes if it has negative values there.

    A rule that does not apply (no ``classifier``, no parameter that requires
    grad, no ``set_return_prerelu``) is reported with status ``'skip'``: not verified, and not a
    failure. The rules run with autograd enabled, even when called under
    :func:`torch.inference_mode` or with an input made there.

    A module compiled with :func:`torch.compile` is checked through its
    original module (``net._orig_mod``): compiling must not change what it
    computes, and checking the compiled one would recompile for every
    ``returnt``, mode and dtype the rules try.

    The backbone is left as it was found: training modes; the parameter,
    buffer and tensor-attribute objects of every module and their values
    (reassigned ones are put back, added ones removed); each ``.grad``; and
    each parameter's ``requires_grad``.

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
        TypeError: ``net`` is not a module, ``example_input`` not a tensor,
            or a tolerance not a float.
        ValueError: ``example_input`` has no batch dimension, the backbone
            refuses it (raises :class:`TypeError` or :class:`ValueError` when
            called on it), or a tolerance is negative.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, check_backbone
        >>> results = check_backbone(MNISTMLP(784, 10), torch.randn(4, 784))
        >>> all(r.status == "pass" for r in results)
        True
        >>> from backbone import CONTRACT_RULES
        >>> [r.rule for r in results] == list(CONTRACT_RULES)
        True
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise ValueError(f"example_input must have a non-empty batch dimension, got shape {tuple(example_input.shape)}")
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(tolerance).__name__}")
        if not tolerance >= 0:
            raise ValueError(f"{name} must be a non-negative float, got {tolerance!r}")
    # A compiled module computes what its original does (the compile tests
    # check that); checking the original avoids a recompile per returnt, mode
    # and dtype, which would exhaust dynamo's recompile limit.
    original = compiled_original(net)
    net = net if original is None else original
    results = []
    # The rules need autograd: run them as normal code, even when called
    # under torch.inference_mode() or with an input made there.
    with torch.inference_mode(False), _preserved(net):
        x = example_input.clone()
        net.eval()
        _check_fits(net, x)
        checker = _Checker(net, x, float(rtol), float(atol))
        for rule, run in _RULES:
            results.append(_run_rule(rule, run, checker))
    if not all(r.passed for r in results):
        raise ContractError(results, type(net).__name__, hint=_adapter_hint(net))
    return results


def _adapter_hint(net: nn.Module) -> str:
    """For a plain timm or torchvision model, the adapter that gives it the backbone API."""
    library = type(net).__module__.split(".")[0]
    adapter = {"timm": "from_timm", "torchvision": "from_torchvision"}.get(library)
    if adapter is None or callable(getattr(net, "get_params", None)):
        return ""
    return (
        f"{type(net).__name__} is a plain {library} model, which has none of the backbone API: "
        f"wrap it with backbone.{adapter}(model) and check that"
    )


def _check_fits(net: nn.Module, x: Tensor) -> None:
    """Raise ValueError if the backbone refuses the example input itself, before any rule blames the backbone."""
    try:
        with torch.no_grad():
            net(x)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"example_input must be a batch the backbone accepts; {type(net).__name__} refused shape "
            f"{tuple(x.shape)} ({x.dtype}): {type(error).__name__}: {error}"
        ) from None
    except Exception:  # any other error is the backbone's, and each rule reports it
        pass


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
        # Whatever the backbone raises is a broken rule, reported with the
        # original error, never raised past the checker.
        return RuleResult(rule, "fail", f"raised {type(error).__name__}: {error}")
    return RuleResult(rule, "pass")
