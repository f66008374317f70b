"""Tuning hooks by site: small modules attached to named layers of any model, applied by one forward hook.

A *site* is a submodule picked by name, as peft's ``target_modules`` picks
them: a sequence of names (a module matches when its qualified name is one
of them or ends with ``"." + name``) or one string, a regular expression that
must match the whole qualified name. The hooks attached there (a LoRA, an
SSF, an adapter) live in the site's own ``tuning`` container, so the host's
``state_dict`` keys are unchanged and the hooks' keys contain ``.tuning.``.
One forward hook per site applies, in this order: the LoRA's delta, the
call's low-rank delta (Mammoth's ``AB``), the scale and shift, the adapter.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_like

__all__ = ["check_delta", "is_site_hook", "low_rank_delta", "select_sites"]

Targets = str | Sequence[str]

Delta = tuple["Tensor | None", Tensor]

#: The low-rank deltas of the calls in progress (nested ones add theirs), keyed by the layer they act on.
_CALL_DELTAS: ContextVar[Mapping[nn.Module, tuple[Delta, ...]] | None] = ContextVar("call_deltas", default=None)
#: The layers that carry a hook for the calls in progress only.
_CALL_HOOKED: ContextVar[frozenset[nn.Module]] = ContextVar("call_hooked", default=frozenset())

#: Set on a layer whose ``tuning`` container is a site's (made by ``attach``); absent on one of its own.
_MARK = "_tuning_site"


def select_sites(
    model: nn.Module, targets: object, kinds: tuple[type[nn.Module], ...], what: str
) -> list[tuple[str, nn.Module]]:
    """The submodules of ``model`` that ``targets`` names, each of one of ``kinds``, in the model's order.

    Raises:
        TypeError: ``targets`` is neither a string nor a sequence of strings.
        ValueError: no module matches, a matched module is of another
            kind, or the pattern is not a valid regular expression.
    """
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise ValueError(f"{what}: target_modules {targets!r} is not a valid regular expression: {error}") from None

        def matches(name: str) -> bool:
            return pattern.fullmatch(name) is not None

    elif isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets):
        names = tuple(cast(Sequence[str], targets))

        def matches(name: str) -> bool:
            return any(name == t or name.endswith("." + t) for t in names)

    else:
        raise TypeError(
            f"{what}: target_modules must be a regular expression (str) or a non-empty sequence of module names, "
            f"got {targets!r}"
        )
    found = [(name, m) for name, m in model.named_modules() if name and matches(name) and ".tuning." not in f".{name}."]
    wrong = [f"{name} ({type(m).__name__})" for name, m in found if not isinstance(m, kinds)]
    kind_names = " or ".join(k.__name__ for k in kinds)
    if wrong:
        raise ValueError(f"{what}: target_modules must pick {kind_names} modules, but it picks {', '.join(wrong[:5])}")
    if not found:
        known = [name for name, m in model.named_modules() if name and isinstance(m, kinds)]
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise ValueError(f"{what}: target_modules {targets!r} matches no module; the {kind_names} modules are {shown}")
    return found


def low_rank_delta(x: Tensor, a: Tensor | None, b: Tensor) -> Tensor:
    """What the weight delta ``b @ a`` (or ``b`` alone, when ``a`` is None) adds to a linear layer's output on ``x``.

    ``x`` is ``[batch, tokens, in]`` (or ``[batch, in]``). Leading dimensions
    of ``a`` and ``b`` broadcast against ``[batch, 1]`` and are summed after
    the product, as Mammoth's ``AB`` deltas are; 2-D factors are one delta
    for every sample. Both an attached LoRA and a call's ``AB`` go through
    here.

    Example:
        >>> import torch
        >>> from backbone.sites import low_rank_delta
        >>> x, a, b = torch.randn(2, 5, 4), torch.randn(3, 4), torch.randn(6, 3)
        >>> torch.allclose(low_rank_delta(x, a, b), x @ (b @ a).T, atol=1e-5)
        True
    """
    if b.dim() == 2 and (a is None or a.dim() == 2):
        return F.linear(x if a is None else F.linear(x, a), b)
    squeeze = x.dim() == 2
    h = (x[:, None, :] if squeeze else x).transpose(-2, -1).unsqueeze(1)  # [batch, 1, in, tokens]
    h = b @ (h if a is None else a @ h)
    out = h.sum(1).transpose(-2, -1)
    return out[:, 0] if squeeze else out


def _site_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """The forward hook of every site: the attached hooks and the call's deltas, applied to the site's output."""
    tuning = cast("nn.ModuleDict | None", module._modules.get("tuning")) if _MARK in module.__dict__ else None
    deltas = _CALL_DELTAS.get()
    mine = deltas.get(module, ()) if deltas else ()
    if not tuning and not mine:
        return output
    if not isinstance(output, Tensor):
        raise TypeError(
            f"a tuning hook needs its layer ({type(module).__name__}) to return a tensor, got {type(output).__name__}"
        )
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, Tensor):
        raise TypeError(f"a tuning hook needs its layer's input to be a tensor, got {type(x).__name__}")
    out = output
    hooks: dict[str, nn.Module] = dict(tuning.items()) if tuning is not None else {}
    lora = hooks.get("lora")
    if lora is not None and not cast(Any, lora).merged:
        out = out + lora(x)
    for delta in mine:
        _check_batch(delta, x.shape[0], module)
        out = out + low_rank_delta(x, *delta)
    if "ssf" in hooks:
        out = hooks["ssf"](out)
    adapter = hooks.get("adapter")
    if adapter is not None:
        out = out + adapter(x if cast(Any, adapter).mode == "parallel" else out)
    return out


def is_site_hook(hook: object) -> bool:
    """Whether a forward hook is a tuning site's (which keeps the examples of a batch apart)."""
    return hook is _site_hook


def check_attachable(name: str, layer: nn.Module, what: str) -> None:
    """Refuse a layer that has a ``tuning`` attribute of its own (the package ViT's blocks, a user's module)."""
    if _MARK not in layer.__dict__ and hasattr(layer, "tuning"):
        raise ValueError(
            f"{what}: {name} has a 'tuning' attribute of its own, where a site keeps its hooks; pick a layer inside "
            "it (for the package's ViT blocks, blocks= attaches the AdaptFormer adapter)"
        )


def _leading(delta: Delta) -> list[tuple[int, ...]]:
    a, b = delta
    return [tuple(b.shape[:-2])] + ([] if a is None else [tuple(a.shape[:-2])])


def _fits_batch(delta: Delta, batch: int) -> bool:
    """Whether a delta's leading dimensions broadcast against ``[batch, 1]`` (one per sample, or one for all)."""
    try:
        return bool(torch.broadcast_shapes((batch, 1), *_leading(delta))[0] == batch)  # type: ignore[no-untyped-call]
    except RuntimeError:
        return False


def _check_batch(delta: Delta, batch: int, layer: nn.Module) -> None:
    if not _fits_batch(delta, batch):
        shapes = ", ".join(str(s) for s in _leading(delta))
        raise ValueError(
            f"a call's AB delta for {type(layer).__name__} has leading dimensions {shapes}, which do not broadcast "
            f"against the batch [{batch}, 1]"
        )


def check_delta(given: object, layer: nn.Linear, what: str, batch: int | None = None) -> Delta:
    """One layer's ``AB`` entry as ``(A or None, B)``: a tensor ``B``, ``{"B": B}`` or ``{"A": A, "B": B}``.

    The shapes are checked against the layer, and against the batch when it
    is known (else when the layer runs).

    Raises:
        TypeError: a factor is not a dense tensor of the layer's dtype.
        ValueError: other keys, or shapes that do not fit.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone.sites import check_delta
        >>> a, b = check_delta({"A": torch.zeros(2, 4), "B": torch.zeros(3, 2)}, nn.Linear(4, 3), "AB[0]['qkv']", 5)
        >>> a.shape, b.shape
        (torch.Size([2, 4]), torch.Size([3, 2]))
    """
    if isinstance(given, Mapping):
        if set(given) - {"A", "B"} or "B" not in given:
            keys = sorted(map(str, given))
            raise ValueError(f"{what} must be a tensor, {{'B': B}} or {{'A': A, 'B': B}}, got keys {keys}")
        a, b = given.get("A"), given["B"]
    else:
        a, b = None, given
    weight = layer.weight
    b = check_like(b, weight, f"{what}'s B")
    a = None if a is None else check_like(a, weight, f"{what}'s A")
    out_features, in_features = layer.out_features, layer.in_features
    if a is None:
        fits = 2 <= b.dim() <= 4 and tuple(b.shape[-2:]) == (out_features, in_features)
        expected = f"[..., {out_features}, {in_features}]"
    else:
        fits = 2 <= a.dim() <= 4 and 2 <= b.dim() <= 4 and a.shape[-1] == in_features
        fits = fits and tuple(b.shape[-2:]) == (out_features, a.shape[-2])
        expected = f"A [..., r, {in_features}] and B [..., {out_features}, r]"
    if batch is not None:
        fits = fits and _fits_batch((a, b), batch)
        expected += f", with leading dimensions that broadcast against [{batch}, 1]"
    if not fits:
        shapes = f"B {tuple(b.shape)}" + ("" if a is None else f", A {tuple(a.shape)}")
        raise ValueError(f"{what} must be {expected}; got {shapes}")
    return a, b


def attach(layer: nn.Module, key: str, hook: nn.Module) -> None:
    """Put ``hook`` in ``layer.tuning[key]``, registering the site's forward hook on first use."""
    if _MARK not in layer.__dict__:
        layer.tuning = nn.ModuleDict()
        layer.register_forward_hook(_site_hook, with_kwargs=True)
        layer.__dict__[_MARK] = True
    cast(nn.ModuleDict, layer.tuning)[key] = hook.train(layer.training)


def attached(layer: nn.Module, key: str) -> nn.Module | None:
    tuning = layer._modules.get("tuning")
    if not isinstance(tuning, nn.ModuleDict) or _MARK not in layer.__dict__:
        return None
    return tuning[key] if key in tuning else None  # noqa: SIM401 (ModuleDict has no get)


def sites_with(model: nn.Module, key: str) -> list[tuple[str, nn.Module, nn.Module]]:
    """Every ``(name, layer, hook)`` with a hook under ``key``, in the model's order."""
    found = []
    for name, layer in model.named_modules():
        hook = attached(layer, key)
        if hook is not None:
            found.append((name, layer, hook))
    return found


def detach_all(model: nn.Module) -> None:
    """Remove every site's hooks and its forward hook; the model is then as it was before any attach."""
    for layer in list(model.modules()):
        if layer.__dict__.pop(_MARK, None) is not None:
            # Found by the function, not by an id kept at registration: ids restart in a process that loads a
            # saved model, while the function is the same object everywhere.
            for key in [k for k, hook in layer._forward_hooks.items() if hook is _site_hook]:
                del layer._forward_hooks[key]
                layer._forward_hooks_with_kwargs.pop(key, None)
            del layer.tuning


@contextlib.contextmanager
def call_deltas(deltas: Mapping[nn.Module, Delta]) -> Iterator[None]:
    """Apply ``deltas`` (a layer's low-rank delta for this call) to the layers' outputs while the block runs.

    A layer without a site hook gets one for the call only. Nested calls add
    their deltas to the outer ones'; each is applied once.
    """
    if not deltas:
        yield
        return
    outer = _CALL_DELTAS.get() or {}
    hooked = _CALL_HOOKED.get()
    fresh = [layer for layer in deltas if _MARK not in layer.__dict__ and layer not in hooked]
    temporary = [layer.register_forward_hook(_site_hook, with_kwargs=True) for layer in fresh]
    combined = dict(outer)
    for layer, delta in deltas.items():
        combined[layer] = (*combined.get(layer, ()), delta)
    token, token_hooked = _CALL_DELTAS.set(combined), _CALL_HOOKED.set(hooked | frozenset(fresh))
    try:
        yield
    finally:
        _CALL_HOOKED.reset(token_hooked)
        _CALL_DELTAS.reset(token)
        for handle in temporary:
            handle.remove()
