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
from torch.nn.modules import module as torch_module

from .sites import is_site_hook

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


def applies(
    module: nn.Module,
    trusted: tuple[type[nn.Module], ...],
    trained: set[int] | None = None,
    ruled: tuple[type[nn.Module], ...] = (),
) -> bool:
    """Whether the batched way gives exactly the per-example loop's gradients for ``module``.

    Every submodule is an exact ``nn.Linear`` or ``nn.LayerNorm`` (not a
    subclass, whose forward could differ; a parametrized weight changes the
    class), one of the per-example modules above, or of a ``trusted`` class
    (the package's own models and layers, whose forward is known to keep the
    examples apart); every parameter whose gradient is wanted (the ids in
    ``trained``; all of them when None) sits directly in a Linear, a
    LayerNorm or a ``ruled`` class (the package's LoRA), which have a rule;
    no module has hooks other than the package's tuning sites, which could
    mix examples or see the batch; and autocast is off (the batched products
    would round otherwise than the loop's).
    """
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        return False
    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    if any(getattr(torch_module, name, None) for name in (*global_hooks, "_global_backward_pre_hooks")):
        return False
    with_rules = (nn.Linear, nn.LayerNorm, *ruled)
    for m in module.modules():
        kind = type(m)
        if not (kind in with_rules or kind in _PER_EXAMPLE or kind in trusted):
            return False
        own = [p for p in m.parameters(recurse=False) if trained is None or id(p) in trained]
        if own and kind not in with_rules:
            return False
        if not all(is_site_hook(h) for h in m._forward_hooks.values()):
            return False
        if m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
        if "forward" in vars(m):  # a forward replaced on the instance: its class says nothing of what it does
            return False
        if isinstance(m, nn.Flatten) and m.start_dim < 1:  # flattening from the batch axis mixes the examples
            return False
    return True


class TokenAxis(Exception):
    """A recorded layer's input has a token axis: the batched way is then not the faster one (see ``run``)."""


# (layer, its input, its output, the parameters it used by name) for one call of the layer; the tensors are
# the values functional_call gave it, which are gone from the layer once the call returns.
Record = tuple[nn.Module, Tensor, Tensor, dict[str, Tensor]]


def forward_recording(
    module: nn.Module, values: dict[str, Tensor], inputs: Tensor, wanted: set[nn.Module]
) -> tuple[Any, list[Record]]:
    """``module(inputs)`` with ``values`` for its parameters, recording each call of the ``wanted`` layers."""
    records: list[Record] = []

    def record(layer: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0]
        widths = (x.shape[-1], output.shape[-1])
        if x.dim() > 2 and x.shape[1:-1].numel() > sum(widths):
            # Many tokens through a narrow layer: its per-example products were measured slower than the loop
            # (4,096 tokens of width 8), so such models are taken the other ways. A ViT's (65 tokens of
            # width 192) are not.
            raise TokenAxis
        used = {name: getattr(layer, name) for name in layer._parameters}
        records.append((layer, x, output, {name: t for name, t in used.items() if t is not None}))
        # What the rest of the model gets is a copy: an in-place activation after the layer must not rewrite
        # the output whose gradient is read here.
        return output.clone()

    # First among the layer's hooks: what is recorded is the layer's own output, before a tuning site's hook adds
    # to it or scales it (an SSF, a sequential adapter).
    handles = [layer.register_forward_hook(record, prepend=True) for layer in wanted]
    try:
        out = functional_call(module, values, (inputs,), tie_weights=False, strict=False)
    finally:
        for handle in handles:
            handle.remove()
    return out, records


@torch.no_grad()
def per_example(records: list[Record], output_grads: tuple[Tensor | None, ...]) -> list[tuple[Tensor, Tensor]]:
    """Each recorded call's per-example gradients: ``(parameter tensor used, [B, *shape])`` pairs, plain data."""
    found: list[tuple[Tensor, Tensor]] = []
    for (layer, x, _, used), g in zip(records, output_grads, strict=True):
        if g is None:
            continue
        x = x.detach()
        batch = x.shape[0]
        weight, bias = used.get("weight"), used.get("bias")
        if isinstance(layer, nn.Linear):
            xs, gs = x.reshape(batch, -1, layer.in_features), g.reshape(batch, -1, layer.out_features)
            if weight is not None:
                found.append((weight, torch.einsum("bto,bti->boi", gs, xs)))
            if bias is not None:
                found.append((bias, gs.sum(1)))
        elif isinstance(layer, nn.LayerNorm):
            shape = tuple(layer.normalized_shape)
            gs = g.reshape(batch, -1, *shape)
            if weight is not None:
                xhat = F.layer_norm(x, shape, None, None, layer.eps).reshape(batch, -1, *shape)
                found.append((weight, (gs * xhat).sum(1)))
            if bias is not None:
                found.append((bias, gs.sum(1)))
        else:  # a LoRA: out = scale * x @ A.T @ B.T
            a, b = used["A"], used["B"]
            scale = float(cast(Any, layer).scale)
            xs, gs = x.reshape(batch, -1, a.shape[1]), g.reshape(batch, -1, b.shape[0])
            found.append((b, torch.einsum("bto,btr->bor", gs, xs @ a.T) * scale))
            found.append((a, torch.einsum("btr,bti->bri", gs @ b, xs) * scale))
    return found


@torch.no_grad()
def squared_sums(
    records: list[Record], output_grads: tuple[Tensor | None, ...], weights: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Each recorded call's ``sum_i weights_i * grad_i ** 2``, without per-example rows where that can be done.

    For a Linear layer without a token axis used once, ``(w * g ** 2).T @ x ** 2``; elsewhere (a token
    axis, a LayerNorm, a LoRA, a parameter used by several calls, whose per-example gradients add before
    squaring) the per-example gradients are formed, call by call, and squared.
    """
    uses: dict[int, int] = {}
    for _, _, _, used in records:
        for t in used.values():
            uses[id(t)] = uses.get(id(t), 0) + 1
    found: list[tuple[Tensor, Tensor]] = []
    pending: list[tuple[Record, Tensor | None]] = []
    for record, g in zip(records, output_grads, strict=True):
        layer, x, _, used = record
        if g is None:
            continue
        alone = all(uses[id(t)] == 1 for t in used.values())
        if isinstance(layer, nn.Linear) and x.dim() == 2 and alone:
            wg = g.square() * weights.detach()[:, None].to(g.dtype)
            if "weight" in used:
                found.append((used["weight"], wg.T @ x.detach().square()))
            if "bias" in used:
                found.append((used["bias"], wg.sum(0)))
        else:
            pending.append((record, g))
    if pending:
        # A parameter used by several calls: its per-example gradients add up before squaring. They are summed
        # call by call, so that at most one call's rows are held next to the running sum.
        summed: dict[int, tuple[Tensor, Tensor]] = {}
        for record, g in pending:
            for param, rows in per_example([record], (g,)):
                key = id(param)
                summed[key] = (param, rows if key not in summed else summed[key][1].add_(rows))
        for param, rows in summed.values():
            w = weights.detach().to(rows.dtype).reshape(-1, *([1] * (rows.dim() - 1)))
            found.append((param, (rows.square_() * w).sum(0)))
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
    outputs = [o for _, _, o, _ in records]
    reached = [o.requires_grad for o in outputs]
    grads: list[Tensor | None] = [None] * len(outputs)
    if per.requires_grad and any(reached):
        found = torch.autograd.grad(
            per.sum(), [o for o, r in zip(outputs, reached, strict=True) if r], allow_unused=True
        )
        it = iter(found)
        grads = [next(it) if r else None for r in reached]
    return records, tuple(grads), aux
