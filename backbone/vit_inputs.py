"""Prompts, prefixes, value offsets and ``AB`` deltas given at the call to a timm ViT.

The package's :class:`~backbone.VisionTransformer` takes these as keyword
arguments of its forward. A timm ``VisionTransformer`` (DeiT, the original
ViT and others with timm's block layout) has no such arguments:
:func:`call_inputs` gives it the same ones for the calls made inside a
``with`` block, through hooks that are removed when the block ends, and
:class:`~backbone.TimmBackbone` (:func:`~backbone.from_timm`) takes them in
its forward as the package's ViT does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_batched, check_like, check_module, check_per_block
from .sites import call_deltas, check_delta

__all__ = ["call_inputs"]

_SITES = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_ACTIVE = "_call_inputs_active"  # set on the model while a call_inputs block runs (nesting is refused)
_MODES = ("replace", "add")


def _blocks(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The timm ViT inside ``model`` (itself, or a :class:`~backbone.TimmBackbone`'s) and its blocks."""
    for vit in (model, getattr(model, "model", None)):
        blocks = getattr(vit, "blocks", None)
        if isinstance(vit, nn.Module) and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
            layout = all(
                isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear)
                and isinstance(getattr(getattr(b, "attn", None), "proj", None), nn.Linear)
                and isinstance(getattr(getattr(b, "mlp", None), "fc1", None), nn.Linear)
                and isinstance(getattr(getattr(b, "mlp", None), "fc2", None), nn.Linear)
                for b in blocks
            )
            if layout:
                return vit, list(blocks)
    raise TypeError(
        f"call_inputs needs a ViT with timm's block layout (blocks[i].attn.qkv/proj, blocks[i].mlp.fc1/fc2), got "
        f"{type(model).__name__}; the package's VisionTransformer takes these inputs as forward's keyword arguments"
    )


@contextlib.contextmanager
def call_inputs(
    model: nn.Module,
    *,
    prompts: Tensor | Callable[[Tensor], Tensor] | Mapping[int, Any] | None = None,
    prompt_mode: str = "replace",
    prefixes: Mapping[int, Tensor] | None = None,
    values: Mapping[int, Tensor] | None = None,
    AB: Mapping[int, Mapping[str, Any]] | None = None,
) -> Iterator[None]:
    """Give a timm ViT prompts, prefixes, value offsets or ``AB`` deltas for the calls made in the block.

    The arguments mean what they mean for the package's
    :meth:`VisionTransformer.forward <backbone.VisionTransformer.forward>`:
    prompts go after the prefix tokens (class and register tokens) before
    the given blocks (``prompt_mode`` ``'replace'`` or ``'add'``, tensors
    ``[B, L, D]`` / ``[L, D]`` or functions of the block's input tokens);
    ``prefixes`` ``{block: [B, 2, L, D]}`` are keys and values put before
    that block's own; ``values`` ``{block: [B, D]}`` are added to every
    token's value; ``AB`` ``{block: {layer: delta}}`` adds low-rank deltas
    to ``qkv``, ``proj``, ``fc1``, ``fc2``. The model's own pooling and
    final norm apply to whatever tokens there are (a ``global_pool='avg'``
    model averages the prompts too). Everything is removed when the block
    ends, also on an error.

    Args:
        model: a timm ``VisionTransformer`` (or a model with its block
            layout), or a :class:`~backbone.TimmBackbone` around one.
        prompts: tokens (or functions making them) by block; a lone one is
            block 0's.
        prompt_mode: ``'replace'`` or ``'add'``.
        prefixes: key and value tokens by block.
        values: value offsets by block.
        AB: Mammoth's low-rank deltas by block and layer.

    Returns:
        A context manager (``with`` gives nothing to bind).

    Raises:
        TypeError: the model has no ViT blocks in timm's layout, or an
            argument is of the wrong type; a shape that does not fit the
            batch is a :class:`ValueError` when the model runs.
        ValueError: a bad block index, layer name or mode.

    Example:
        >>> import torch
        >>> from backbone import call_inputs, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10).eval()     # any ViT with timm's blocks; a timm model the same way
        >>> x = torch.randn(2, 3, 32, 32)
        >>> with call_inputs(net, prefixes={0: torch.zeros(2, 3, 192)}):
        ...     out = net(x)
        >>> out.shape
        torch.Size([2, 10])
    """
    module = check_module(model, " as call_inputs's model")
    vit, blocks = _blocks(module)
    if _ACTIVE in vit.__dict__:
        raise ValueError(
            "call_inputs is already active on this model; give all the call's inputs in one call_inputs block"
        )
    if prompt_mode not in _MODES:
        raise ValueError(f"prompt_mode must be one of {', '.join(map(repr, _MODES))}, got {prompt_mode!r}")
    depth = len(blocks)
    ref = cast(nn.Linear, cast(Any, blocks[0]).attn.qkv).weight
    dim = ref.shape[1]
    given_prompts = check_per_block(prompts, depth, "prompts", lone_means_block_0=True)
    for i, p in given_prompts.items():
        if not callable(p) or isinstance(p, Tensor):
            check_like(p, ref, f"prompts for block {i}")
    given_prefixes = {
        i: check_like(t, ref, f"prefixes for block {i}")
        for i, t in check_per_block(prefixes, depth, "prefixes").items()
    }
    given_values = {
        i: check_like(t, ref, f"values for block {i}") for i, t in check_per_block(values, depth, "values").items()
    }
    deltas: dict[nn.Module, tuple[Tensor | None, Tensor]] = {}
    for i, layers in check_per_block(AB, depth, "AB").items():
        if not isinstance(layers, Mapping):
            raise TypeError(f"AB[{i}] must map layer names to deltas, got {type(layers).__name__}")
        for site, delta in layers.items():
            if site not in _SITES:
                raise ValueError(f"AB[{i}] names layers out of {tuple(_SITES)}, got {site!r}")
            if delta is None:
                continue
            layer = cast(nn.Linear, blocks[i].get_submodule(_SITES[site]))
            deltas[layer] = check_delta(delta, layer, f"AB[{i}][{site!r}]")
    prefix_tokens = int(getattr(vit, "num_prefix_tokens", 1))
    state = {"prompted": 0}
    handles = []

    def put_prompts(index: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = cast(Tensor, args[0])
            if index == min(given_prompts):
                state["prompted"] = 0
            source = given_prompts[index]
            made = source if isinstance(source, Tensor) else source(x)
            prompt = check_batched(made, x.shape[0], (None, dim), ref, f"prompts for block {index}", empty=True)
            present = state["prompted"]
            keep = x[:, prefix_tokens + present :] if prompt_mode == "replace" else x[:, prefix_tokens:]
            x = torch.cat([x[:, :prefix_tokens], prompt.to(x.dtype), keep], dim=1)
            state["prompted"] = prompt.shape[1] + (0 if prompt_mode == "replace" else present)
            return (x, *args[1:])

        return hook

    saved_forwards: list[nn.Module] = []
    vit.__dict__[_ACTIVE] = True
    try:
        for i in given_prompts:
            handles.append(blocks[i].register_forward_pre_hook(put_prompts(i)))
        for i in sorted(set(given_prefixes) | set(given_values)):
            attn = cast(nn.Module, cast(Any, blocks[i]).attn)
            attn.forward = _attention_with(attn, given_prefixes.get(i), given_values.get(i), dim)
            saved_forwards.append(attn)
        with call_deltas(deltas):
            yield
    finally:
        for handle in handles:
            handle.remove()
        for attn in saved_forwards:
            del attn.forward
        vit.__dict__.pop(_ACTIVE, None)


def _attention_with(attn: nn.Module, prefix: Tensor | None, value: Tensor | None, dim: int) -> Callable[..., Tensor]:
    """timm's attention forward, with prefix keys and values and a value offset (DualPrompt, STAR-Prompt)."""
    heads = int(cast(Any, attn).num_heads)

    def forward(x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("prefixes and values are not supported together with an attention mask")
        a = cast(Any, attn)
        ref = cast(Tensor, a.qkv.weight)
        batch, tokens, _ = x.shape
        head_dim = int(getattr(a, "head_dim", dim // heads))
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        q, k, v = a.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k = getattr(a, "q_norm", nn.Identity())(q), getattr(a, "k_norm", nn.Identity())(k)
        if value is not None:
            v = v + check_batched(value, batch, (heads * head_dim,), ref, "values").reshape(batch, heads, 1, head_dim)
        if prefix is not None:
            pk, pv = (
                check_batched(prefix, batch, (2, None, heads * head_dim), ref, "prefixes")
                .reshape(batch, 2, -1, heads, head_dim)
                .permute(1, 0, 3, 2, 4)
            )
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        drop = float(a.attn_drop.p) if a.training and hasattr(a, "attn_drop") else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=getattr(a, "scale", None))
        out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        out = getattr(a, "norm", nn.Identity())(out)
        if gate is not None:
            out = out * gate
        out = a.proj(out)
        return cast(Tensor, getattr(a, "proj_drop", nn.Identity())(out))

    return forward
