"""Weight initialisation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["xavier"]


def xavier(m: nn.Module) -> None:
    """Apply Glorot-uniform initialisation to a linear layer, in place.

    The weight of every :class:`torch.nn.Linear` (subclasses included) is
    drawn as :func:`torch.nn.init.xavier_uniform_` draws it, the bias is set to
    zero, and any other module is left untouched. It is meant for
    ``net.apply(xavier)``.

    It is the *effective* weight that ends up Glorot-uniform, also when the
    weight is computed from other tensors:

    * parametrized weights (:mod:`torch.nn.utils.parametrize`, for example
      :func:`torch.nn.utils.parametrizations.weight_norm`) are assigned the
      drawn matrix, which the parametrization's ``right_inverse`` turns into
      its original tensors; a parametrization without ``right_inverse`` is
      refused;
    * the older :func:`torch.nn.utils.weight_norm` gets ``weight_v`` set to
      the drawn matrix and ``weight_g`` to its norms;
    * any other weight that is not a parameter (another hook computes it) is
      refused, since writing it would be undone at the next forward.

    A weight with no elements has nothing to draw; its bias is still zeroed.
    Checks run before anything is written.

    Args:
        m: the module to initialise.

    Raises:
        TypeError: ``m`` is not a module, or the layer's weight cannot be
            initialised (see above), or it is not materialised yet
            (:class:`torch.nn.LazyLinear` before its first forward).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import xavier
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU())
        >>> _ = net.apply(xavier)
        >>> torch.equal(net[0].bias, torch.zeros(10))
        True
        >>> bool(net[0].weight.abs().max() <= (6 / 20) ** 0.5)
        True
        >>> from torch.nn.utils.parametrizations import weight_norm
        >>> layer = weight_norm(nn.Linear(10, 10))
        >>> xavier(layer)
        >>> bool(layer.weight.abs().max() <= (6 / 20) ** 0.5 + 1e-6)
        True
    """
    if not isinstance(m, nn.Module):
        raise TypeError(f"xavier expects a torch.nn.Module, got {type(m).__name__}")
    if not isinstance(m, nn.Linear):
        return
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in m.parameters()):
        raise TypeError(
            f"xavier expects a materialised weight, got an uninitialised one on {type(m).__name__}; "
            "run one forward pass first so that its shape is known"
        )
    values = {"weight": _glorot_uniform(m)}
    if m.bias is not None:
        bias = _source_tensor(m, "bias")
        values["bias"] = torch.zeros(m.out_features, dtype=bias.dtype, device=bias.device)
    writers = {name: _writer(m, name) for name in values}
    # A parametrization may turn out unable to represent the value only once
    # it is assigned, and right_inverse may replace buffers: keep what was
    # there, objects and values, to put it back.
    saved: list[tuple[dict[str, Any], str, Tensor, Tensor]] = [
        (slots, key, t, t.detach().clone())
        for module in m.modules()
        for slots in (module._parameters, module._buffers)
        for key, t in slots.items()
        if t is not None
    ]
    try:
        with torch.no_grad():
            for name, value in values.items():
                if value is not None:
                    writers[name](value)
    except BaseException:
        with torch.no_grad():
            for slots, key, t, before in saved:
                slots[key] = t
                t.set_(before)  # type: ignore[call-overload]
        raise


def _glorot_uniform(m: nn.Linear) -> Tensor | None:
    """A Glorot-uniform matrix for ``m``'s weight, drawn as ``nn.init.xavier_uniform_`` draws."""
    if m.in_features * m.out_features == 0:
        return None
    reference = _source_tensor(m, "weight")
    bound = math.sqrt(6.0 / (m.in_features + m.out_features))
    # Draw in float32 at least: uniform_ in half precision is coarse.
    dtype = torch.promote_types(reference.dtype, torch.float32)
    drawn = torch.empty(m.out_features, m.in_features, dtype=dtype, device=reference.device)
    return drawn.uniform_(-bound, bound).to(reference.dtype)


def _source_tensor(m: nn.Module, name: str) -> Tensor:
    """A tensor ``name`` is computed from, for its dtype and device, without computing it."""
    if parametrize.is_parametrized(m, name):
        parametrization = _parametrizations(m, name)
        return next(itertools.chain(parametrization.parameters(), parametrization.buffers()))
    if name in m._parameters:
        return cast(Tensor, m._parameters[name])
    return cast(Tensor, getattr(m, f"{name}_v", getattr(m, name)))


def _parametrizations(m: nn.Module, name: str) -> nn.ModuleList:
    return cast(nn.ModuleList, cast(nn.ModuleDict, m.parametrizations)[name])


def _writer(m: nn.Linear, name: str) -> Callable[[Tensor], object]:
    """How to make ``m``'s effective ``name`` a given tensor; raises if there is no way."""
    if parametrize.is_parametrized(m, name):
        missing = [type(p).__name__ for p in _parametrizations(m, name) if not hasattr(p, "right_inverse")]
        if missing:
            raise TypeError(
                f"xavier expects every parametrization of {name} to have right_inverse, so that the {name} can be "
                f"assigned; got {', '.join(missing)} without it on {type(m).__name__}"
            )
        return lambda value: _assign_parametrized(m, name, value)
    if name in m._parameters:
        return cast(Tensor, getattr(m, name)).copy_
    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == name:
            return lambda value: _set_weight_norm(m, hook, value)
    raise TypeError(
        f"xavier expects the {name} of {type(m).__name__} to be a parameter or a parametrization, got a "
        f"{type(getattr(m, name)).__name__} computed elsewhere (a forward pre-hook?); initialise what it is computed "
        "from instead"
    )


def _assign_parametrized(m: nn.Module, name: str, value: Tensor) -> None:
    setattr(m, name, value)  # right_inverse computes the original tensors
    actual = getattr(m, name)
    tolerance = 16 * torch.finfo(value.dtype).eps
    if not torch.allclose(actual, value, rtol=tolerance, atol=tolerance * value.abs().max().item()):
        names = ", ".join(type(p).__name__ for p in _parametrizations(m, name))
        raise TypeError(
            f"xavier expects a parametrization that can represent any {name}, so that the effective {name} is "
            f"Glorot-uniform; got {names} on {type(m).__name__}, which changes the assigned {name}"
        )


def _set_weight_norm(m: nn.Module, hook: WeightNorm, value: Tensor) -> None:
    """Make the old-style ``weight_norm`` weight equal ``value``: direction ``value``, magnitude its norms."""
    g, v = getattr(m, f"{hook.name}_g"), getattr(m, f"{hook.name}_v")
    v.copy_(value)
    g.copy_(torch.norm_except_dim(value, 2, hook.dim).view_as(g))
    setattr(m, hook.name, hook.compute_weight(m))  # current until the next forward recomputes it
