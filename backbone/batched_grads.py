"""Per-example gradients from one batched forward and backward, for models made of Linear and LayerNorm layers.

A Linear layer's gradient for example ``i`` is ``g_i.T @ x_i`` (its output
gradient against its input, summed over any token axis) and its bias's is
``g_i`` summed; a LayerNorm's are ``g_i * xhat_i`` and ``g_i``, with
``xhat`` its normalised input. One batched backward of the sum of the
examples' losses gives every ``g_i``, exactly as a backward of example
``i``'s loss alone would, provided no operation mixes the examples: so the
way is taken only for models built of those layers, pointwise activations,
dropout and the standard containers (BackPACK's and Opacus's rule, without
their generality). For the Fisher, the sum over examples of
``w_i * (g_i x_i.T) ** 2`` is ``(w * g ** 2).T @ x ** 2`` where there is no
token axis, so no per-example row is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

#: Modules without parameters that act on each example alone (the rows of a batch never meet).
_PER_EXAMPLE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.Mish,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Dropout,
    nn.Identity,
    nn.Flatten,
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)


def applies(module: nn.Module, trusted: tuple[type[nn.Module], ...]) -> bool:
    """Whether the batched way gives exactly the per-example loop's gradients for ``module``.

    Every submodule is an exact ``nn.Linear`` or ``nn.LayerNorm`` (not a
    subclass, whose forward could differ; a parametrized weight changes the
    class), one of the per-example modules above, or of a ``trusted`` class
    (the package's own models whose forward is known to keep examples
    apart); no module has hooks, which could mix examples or see the batch;
    and autocast is off (the batched products would round otherwise than
    the loop's).
    """
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        return False
    for m in module.modules():
        kind = type(m)
        if not (kind in (nn.Linear, nn.LayerNorm) or kind in _PER_EXAMPLE or kind in trusted):
            return False
        if kind not in (nn.Linear, nn.LayerNorm) and any(True for _ in m.parameters(recurse=False)):
            return False
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    return True


# (layer, its input, its output, the weight and bias it used) for one call of the layer; the tensors are the
# values functional_call gave it, which are gone from the layer once the call returns.
Record = tuple[nn.Module, Tensor, Tensor, Tensor | None, Tensor | None]


def forward_recording(
    module: nn.Module, values: dict[str, Tensor], inputs: Tensor, wanted: set[nn.Module]
) -> tuple[Any, list[Record]]:
    """``module(inputs)`` with ``values`` for its parameters, recording each call of the ``wanted`` layers."""
    records: list[Record] = []

    def record(layer: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        records.append((layer, args[0], output, cast(Any, layer).weight, cast(Any, layer).bias))

    handles = [layer.register_forward_hook(record) for layer in wanted]
    try:
        out = functional_call(module, values, (inputs,), tie_weights=False, strict=False)
    finally:
        for handle in handles:
            handle.remove()
    return out, records


def per_example(records: list[Record], output_grads: tuple[Tensor | None, ...]) -> list[tuple[Tensor, Tensor]]:
    """Each recorded call's per-example gradients: ``(parameter tensor used, [B, *shape])`` pairs."""
    found: list[tuple[Tensor, Tensor]] = []
    for (layer, x, _, weight, bias), g in zip(records, output_grads, strict=True):
        if g is None:
            continue
        batch = x.shape[0]
        if isinstance(layer, nn.Linear):
            xs, gs = x.reshape(batch, -1, layer.in_features), g.reshape(batch, -1, layer.out_features)
            if weight is not None:
                found.append((weight, torch.einsum("bto,bti->boi", gs, xs)))
            if bias is not None:
                found.append((bias, gs.sum(1)))
        else:
            norm = cast(nn.LayerNorm, layer)
            shape = tuple(norm.normalized_shape)
            gs = g.reshape(batch, -1, *shape)
            if weight is not None:
                xhat = F.layer_norm(x, shape, None, None, norm.eps).reshape(batch, -1, *shape)
                found.append((weight, (gs * xhat).sum(1)))
            if bias is not None:
                found.append((bias, gs.sum(1)))
    return found


def squared_sums(
    records: list[Record], output_grads: tuple[Tensor | None, ...], weights: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Each recorded call's ``sum_i weights_i * grad_i ** 2``, without per-example rows where there is no token axis.

    With a token axis (or two calls of one layer, whose per-example
    gradients add before squaring), the per-example gradients are formed and
    squared.
    """
    uses: dict[int, int] = {}
    for _, _, _, weight, bias in records:
        for t in (weight, bias):
            if t is not None:
                uses[id(t)] = uses.get(id(t), 0) + 1
    found: list[tuple[Tensor, Tensor]] = []
    pending: list[tuple[Record, Tensor | None]] = []
    for record, g in zip(records, output_grads, strict=True):
        layer, x, _, weight, bias = record
        if g is None:
            continue
        alone = all(t is None or uses[id(t)] == 1 for t in (weight, bias))
        if isinstance(layer, nn.Linear) and x.dim() == 2 and alone:
            wg = g.square() * weights[:, None].to(g.dtype)
            if weight is not None:
                found.append((weight, wg.T @ x.square()))
            if bias is not None:
                found.append((bias, wg.sum(0)))
        else:
            pending.append((record, g))
    if pending:
        summed: dict[int, tuple[Tensor, Tensor]] = {}
        for param, rows in per_example([r for r, _ in pending], tuple(g for _, g in pending)):
            key = id(param)
            summed[key] = (param, rows if key not in summed else summed[key][1] + rows)
        for param, rows in summed.values():
            w = weights.to(rows.dtype).reshape(-1, *([1] * (rows.dim() - 1)))
            found.append((param, (rows.square() * w).sum(0)))
    return found


def run(
    module: nn.Module,
    values: dict[str, Tensor],
    inputs: Tensor,
    wanted: set[nn.Module],
    losses: Callable[[Any], tuple[Tensor, Tensor | None]],
) -> tuple[list[Record], tuple[Tensor | None, ...], Tensor | None]:
    """One batched forward and backward: the records, each record's output gradient, and ``losses``' aux.

    ``losses(output)`` gives the per-example losses ``[B]`` (whose sum is
    differentiated) and an optional auxiliary tensor.
    """
    out, records = forward_recording(module, values, inputs, wanted)
    per, aux = losses(out)
    outputs = [o for _, _, o, _, _ in records]
    reached = [o.requires_grad for o in outputs]
    grads: list[Tensor | None] = [None] * len(outputs)
    if per.requires_grad and any(reached):
        found = torch.autograd.grad(
            per.sum(), [o for o, r in zip(outputs, reached, strict=True) if r], allow_unused=True
        )
        it = iter(found)
        grads = [next(it) if r else None for r in reached]
    return records, tuple(grads), aux
