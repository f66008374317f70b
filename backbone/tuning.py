"""Small modules that tune part of a pretrained model, and the calls that attach them.

Each hook is an ordinary ``nn.Module`` that lives inside the model, in a
``tuning`` container: the one of the layer it acts on for a LoRA, an SSF or
an adapter picked by name (``blocks.0.attn.qkv.tuning.lora``, on any model,
applied by one forward hook on that layer; see :mod:`backbone.sites`), the
package ViT's ``blocks.{i}.tuning`` for its AdaptFormer adapters and its
``tuning`` for prompt tokens. Its parameters are the model's: they follow
``.to()`` and ``state_dict``, the host's own keys do not change, and their
names are easy to pick out: every tuning parameter's name starts with
``tuning.`` or contains ``.tuning.``. A model with nothing attached has no
site containers and empty ViT containers, which hold no parameters and add
no ``state_dict`` keys.

* :class:`~backbone.LoRA`: a low-rank delta ``scale * B @ A`` added to an
  ``nn.Linear``, with :func:`~backbone.merge_lora` / :func:`~backbone.unmerge_lora`.
* :class:`~backbone.Adapter`: a bottleneck MLP beside (``'parallel'``) or after
  (``'sequential'``) a block's MLP, or any module picked by name.
* :class:`~backbone.SSF`: a learned scale and shift after chosen layers.
* :class:`~backbone.PromptTokens`: learned tokens put after the class token, before
  chosen blocks of the package's ViT (shallow: before block 0; deep: before several).

:func:`~backbone.freeze_base` then leaves only these (and optionally the head)
trainable, so that the flat operations with ``select="trainable"`` cover
exactly them. Prompts chosen per sample, prefixes, value offsets and
Mammoth's ``AB`` deltas are passed at the call instead: see
:meth:`VisionTransformer.forward <backbone.VisionTransformer.forward>` and,
for a timm ViT, :func:`~backbone.call_inputs`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import sites as _sites
from ._checks import check_bool, check_int, check_module
from .models.vit import VisionTransformer
from .sites import low_rank_delta, select_sites

__all__ = [
    "LINEAR_SITES",
    "SSF",
    "SSF_SITES",
    "Adapter",
    "LoRA",
    "PromptTokens",
    "add_adapters",
    "add_lora",
    "add_prompts",
    "add_ssf",
    "freeze_base",
    "is_tuning_parameter",
    "merge_lora",
    "remove_tuning",
    "unmerge_lora",
]

LINEAR_SITES: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
"""The linear layers of a block that :class:`~backbone.LoRA` and Mammoth's ``AB`` deltas act on.

Example:
    >>> from backbone import LINEAR_SITES
    >>> LINEAR_SITES
    ('qkv', 'proj', 'fc1', 'fc2')
"""

SSF_SITES: tuple[str, ...] = ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
"""The outputs in a block that :class:`~backbone.SSF` can scale and shift.

Example:
    >>> from backbone import SSF_SITES
    >>> SSF_SITES
    ('norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2')
"""


class LoRA(nn.Module):
    """A low-rank delta for a linear layer: adds ``scale * x @ A.T @ B.T`` to its output.

    ``A`` is ``[rank, in_features]`` (Kaiming-uniform, as ``nn.Linear``
    starts its weight), ``B`` is ``[out_features, rank]`` (zeros), and
    ``scale = alpha / rank``, so that a fresh LoRA changes nothing. While the
    delta is merged into the layer's weight (:func:`~backbone.merge_lora`),
    ``merged`` is True and the model skips this module.

    Args:
        in_features: the layer's input width.
        out_features: the layer's output width.
        rank: the rank of the delta.
        alpha: the scale's numerator; ``rank`` (a scale of 1) when None.

    Raises:
        ValueError: a size is not a positive int, or ``alpha`` is not a
            finite number.

    Example:
        >>> import torch
        >>> from backbone import LoRA
        >>> lora = LoRA(6, 4, rank=2)
        >>> lora.A.shape, lora.B.shape, lora.scale
        (torch.Size([2, 6]), torch.Size([4, 2]), 1.0)
        >>> torch.equal(lora(torch.ones(3, 6)), torch.zeros(3, 4))
        True
    """

    _unmerged_weight: Tensor | None
    _merged_A: Tensor | None
    _merged_B: Tensor | None

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if check_int(value, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {value}")
        if alpha is None:
            alpha = float(rank)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number or None, got {alpha!r}")
        super().__init__()
        self.rank = rank
        self.scale = float(alpha) / rank
        self.merged = False
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        # The layer's weight from before merge_lora, so that unmerge_lora
        # restores it exactly; a buffer so that it follows .to().
        self.register_buffer("_unmerged_weight", None, persistent=False)
        # The factors as merged, so that the merged weight can be recomputed after a conversion.
        self.register_buffer("_merged_A", None, persistent=False)
        self.register_buffer("_merged_B", None, persistent=False)
        # A digest of the merged weight's bytes and its dtype, as merge_lora left it.
        self._merge_stamp: tuple[str, torch.dtype] | None = None

    def delta(self) -> Tensor:
        """The weight delta ``scale * B @ A``, ``[out_features, in_features]``.

        Example:
            >>> import torch
            >>> from backbone import LoRA
            >>> lora = LoRA(3, 2, rank=1, alpha=2.0)
            >>> with torch.no_grad():
            ...     _ = lora.A.fill_(1.0), lora.B.fill_(0.5)
            >>> lora.delta()
            tensor([[1., 1., 1.],
                    [1., 1., 1.]], grad_fn=<MulBackward0>)
        """
        return (self.B @ self.A) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        """Return ``scale * x @ A.T @ B.T``: what the delta adds to the layer's output."""
        return low_rank_delta(x, self.A, self.B) * self.scale

    def extra_repr(self) -> str:
        out_features, in_features = self.B.shape[0], self.A.shape[1]
        return f"in_features={in_features}, out_features={out_features}, rank={self.rank}, scale={self.scale}" + (
            ", merged" if self.merged else ""
        )


class Adapter(nn.Module):
    """A bottleneck MLP added to a block's MLP branch (AdaptFormer's adapter).

    ``adapter(h) = scale * up(dropout(relu(down(h))))``, with ``up``
    starting at zero so that a fresh adapter changes nothing. In a block
    whose residual stream after attention is ``x`` and whose MLP branch
    gives ``m = mlp(norm2(x))``:

    * ``'parallel'``: the block returns ``x + (m + adapter(x))``;
    * ``'sequential'``: the block returns ``x + (m + adapter(m))``.

    AdaptFormer's options (as RanPAC and EASE build it): ``norm='in'``
    normalises ``h`` first, ``norm='out'`` the scaled output (a LayerNorm
    of its own, ``norm``); ``scale='learnable'`` makes the scale a
    parameter starting at 1; ``dropout`` drops hidden units in training.

    Args:
        dim: the token width ``D``.
        bottleneck: the hidden width.
        mode: ``'parallel'`` or ``'sequential'``.
        scale: the factor on the adapter's output, or ``'learnable'``.
        dropout: the probability of dropping a hidden unit in training.
        norm: ``'none'``, ``'in'`` or ``'out'``: where a LayerNorm goes.

    Raises:
        ValueError: a size is not a positive int, ``mode`` or ``norm`` is
            unknown, ``scale`` is not a finite number or ``'learnable'``, or
            ``dropout`` is not in [0, 1).

    Example:
        >>> import torch
        >>> from backbone import Adapter
        >>> adapter = Adapter(8, 2, mode="sequential")
        >>> adapter.mode, adapter.down.weight.shape, torch.equal(adapter(torch.ones(1, 8)), torch.zeros(1, 8))
        ('sequential', torch.Size([2, 8]), True)
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        mode: str = "parallel",
        scale: float | str = 1.0,
        *,
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        for name, value in (("dim", dim), ("bottleneck", bottleneck)):
            if check_int(value, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {value}")
        if mode not in ("parallel", "sequential"):
            raise ValueError(f"mode must be 'parallel' or 'sequential', got {mode!r}")
        if scale != "learnable" and (
            isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale)
        ):
            raise ValueError(f"scale must be a finite number or 'learnable', got {scale!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if norm not in ("none", "in", "out"):
            raise ValueError(f"norm must be 'none', 'in' or 'out', got {norm!r}")
        super().__init__()
        self.mode = mode
        self.scale: float | nn.Parameter = nn.Parameter(torch.ones(1)) if scale == "learnable" else float(scale)
        self.dropout = float(dropout)
        self.where_norm = norm
        self.norm = nn.LayerNorm(dim) if norm != "none" else None
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(cast(Tensor, self.down.bias))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(cast(Tensor, self.up.bias))

    def forward(self, h: Tensor) -> Tensor:
        """Return ``scale * up(dropout(relu(down(h))))``, with the LayerNorm where ``norm`` puts it."""
        if self.norm is not None and self.where_norm == "in":
            h = self.norm(h)
        hidden = F.dropout(F.relu(self.down(h)), p=self.dropout, training=self.training)
        out = cast(Tensor, self.up(hidden)) * self.scale
        return cast(Tensor, self.norm(out)) if self.norm is not None and self.where_norm == "out" else out

    def extra_repr(self) -> str:
        scale = "learnable" if isinstance(self.scale, nn.Parameter) else self.scale
        return f"mode={self.mode!r}, scale={scale}, dropout={self.dropout}, norm={self.where_norm!r}"


class SSF(nn.Module):
    """Scale and shift: ``x * scale + shift`` over the last dimension (starts as the identity).

    Args:
        dim: the width of the last dimension.

    Raises:
        ValueError: ``dim`` is not a positive int.

    Example:
        >>> import torch
        >>> from backbone import SSF
        >>> ssf = SSF(4)
        >>> x = torch.randn(2, 3, 4)
        >>> torch.equal(ssf(x), x), ssf.scale.shape, ssf.shift.shape
        (True, torch.Size([4]), torch.Size([4]))
    """

    def __init__(self, dim: int) -> None:
        if check_int(dim, "dim") < 1:
            raise ValueError(f"dim must be a positive int, got {dim}")
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x * scale + shift``."""
        return x * self.scale + self.shift


class PromptTokens(nn.Module):
    """Learned prompt tokens, put after the class token before each of ``blocks``.

    ``tokens[k]`` (``[length, D]``) goes in before block ``blocks[k]``,
    replacing the prompts an earlier block received (VPT-deep); with
    ``blocks=(0,)`` the prompts go in once and stay (VPT-shallow, L2P). The
    tokens start uniform in ``[-1, 1]``.

    Args:
        length: prompt tokens per block.
        dim: the token width ``D``.
        blocks: the block indices, strictly increasing.

    Raises:
        ValueError: a size is not a positive int, or ``blocks`` is empty,
            negative or not strictly increasing.

    Example:
        >>> from backbone import PromptTokens
        >>> prompts = PromptTokens(5, 8, blocks=(0, 2))
        >>> prompts.tokens.shape, prompts.blocks
        (torch.Size([2, 5, 8]), (0, 2))
    """

    def __init__(self, length: int, dim: int, blocks: Sequence[int] = (0,)) -> None:
        for name, value in (("length", length), ("dim", dim)):
            if check_int(value, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {value}")
        chosen = _block_list(blocks, "blocks")
        if not chosen or chosen[0] < 0 or any(b <= a for a, b in itertools.pairwise(chosen)):
            raise ValueError(f"blocks must be non-negative block indices in increasing order, got {blocks!r}")
        super().__init__()
        self.blocks = tuple(chosen)
        self.tokens = nn.Parameter(torch.empty(len(chosen), length, dim).uniform_(-1.0, 1.0))

    def extra_repr(self) -> str:
        return f"length={self.tokens.shape[1]}, dim={self.tokens.shape[2]}, blocks={self.blocks}"


def _block_list(blocks: object, name: str) -> list[int]:
    if isinstance(blocks, str | bytes) or not isinstance(blocks, Iterable):
        raise TypeError(f"{name} must be a sequence of block indices, got {type(blocks).__name__}")
    return [check_int(b, f"each of {name}") for b in blocks]


_WAY = (
    "pass target_modules (names or a regular expression, as peft's) to pick the layers of any model, or "
    "blocks=/sites= on a ViT with timm's layout (backbone.VisionTransformer, a timm VisionTransformer, from_timm)"
)


def _vit_blocks(model: object, what: str) -> list[Any]:
    """The reference ViT's blocks, each with its ``tuning`` container; refuses anything else."""
    module = check_module(model, f" as {what}'s model")
    blocks = getattr(module, "blocks", None)
    tuning = getattr(module, "tuning", None)
    if not (
        isinstance(blocks, nn.Sequential)
        and isinstance(tuning, nn.ModuleDict)
        and all(isinstance(getattr(b, "tuning", None), nn.ModuleDict) for b in blocks)
    ):
        raise TypeError(
            f"{what} expects the package's VisionTransformer, got {type(module).__name__}; for a timm ViT, build "
            "the same architecture here (VisionTransformer(...) or vit_base_patch16_224(...)) and load its weights "
            "with load_checkpoint(net, timm_model.state_dict())"
        )
    return list(blocks)


def _timm_layout_blocks(model: nn.Module, what: str) -> tuple[str, list[nn.Module]]:
    """The qualified name of a ViT's block container and its blocks, for ``blocks=``/``sites=``.

    Any model whose ``blocks`` (or, for an adapter such as
    :func:`~backbone.from_timm`, ``model.blocks``) holds blocks with timm's
    ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1`` and
    ``mlp.fc2``.
    """
    for prefix in ("blocks", "model.blocks"):
        try:
            container = model.get_submodule(prefix)
        except AttributeError:
            continue
        blocks = list(container.children()) if isinstance(container, nn.Sequential | nn.ModuleList) else []
        if blocks and all(_has_timm_layout(b) for b in blocks):
            return prefix, blocks
    raise TypeError(f"{what}: {type(model).__name__} has no ViT blocks in timm's layout; {_WAY}")


def _has_timm_layout(block: nn.Module) -> bool:
    paths = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    try:
        return all(isinstance(block.get_submodule(p), nn.Module) for p in paths)
    except AttributeError:
        return False


def _chosen_blocks(blocks: object, depth: int, what: str) -> list[int]:
    if blocks is None:
        return list(range(depth))
    chosen = _block_list(blocks, "blocks")
    if not chosen:
        raise ValueError(f"{what}: blocks must name at least one block, got an empty sequence")
    for b in chosen:
        if not 0 <= b < depth:
            raise ValueError(f"{what}: block index {b} is out of range for a model of {depth} blocks")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what}: blocks repeats an index, got {blocks!r}")
    return chosen


def _chosen_sites(sites: object, allowed: tuple[str, ...], what: str) -> list[str]:
    if isinstance(sites, str):
        sites = (sites,)
    if not isinstance(sites, Iterable):
        raise TypeError(f"{what}: expected a sequence of site names, got {type(sites).__name__}")
    chosen = list(sites)
    if not chosen:
        raise ValueError(f"{what}: expected at least one site out of {allowed}, got none")
    for site in chosen:
        if site not in allowed:
            raise ValueError(f"{what}: expected sites out of {allowed}, got {site!r}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what}: a site is repeated in {tuple(chosen)}")
    return chosen


_SITE_PATHS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def _layers(
    model: nn.Module,
    target_modules: object,
    sites: object,
    allowed: tuple[str, ...],
    blocks: object,
    kinds: tuple[type[nn.Module], ...],
    what: str,
) -> list[tuple[str, nn.Module]]:
    """The layers a hook goes on: by ``target_modules`` on any model, else by ``sites`` and ``blocks`` on a ViT."""
    check_module(model, f" as {what}'s model")
    if target_modules is not None:
        if sites is not None or blocks is not None:
            raise ValueError(f"{what}: give target_modules, or sites and blocks, not both")
        return select_sites(model, target_modules, kinds, what)
    prefix, all_blocks = _timm_layout_blocks(model, what)
    chosen_sites = _chosen_sites(allowed if sites is None else sites, allowed, what)
    names = [
        f"{prefix}.{i}.{_SITE_PATHS.get(site, site)}"
        for i in _chosen_blocks(blocks, len(all_blocks), what)
        for site in chosen_sites
    ]
    return [(name, model.get_submodule(name)) for name in names]


def _check_free(layers: list[tuple[str, nn.Module]], key: str, what: str) -> None:
    """Refuse before anything is built (building draws random numbers) if any place is taken."""
    for name, layer in layers:
        _sites.check_attachable(name, layer, what)
        if _sites.attached(layer, key) is not None:
            raise ValueError(f"{what}: {name} already has {key!r} attached; remove_tuning first")


def _width(layer: nn.Module, what: str, name: str, side: str) -> int:
    """A site's input (``side='in'``) or output width: a Linear's, a LayerNorm's, or the first/last Linear inside."""
    if isinstance(layer, nn.LayerNorm):
        return int(layer.normalized_shape[-1])
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{what}: cannot tell the width of {name} ({type(layer).__name__}); pick a Linear or LayerNorm"
        )
    return linears[0].in_features if side == "in" else linears[-1].out_features


def _reference(layer: nn.Module, model: nn.Module) -> Tensor:
    """A tensor whose device and dtype a hook on ``layer`` takes: its first parameter, else the model's."""
    for p in itertools.chain(layer.parameters(), model.parameters()):
        return p
    return torch.empty(0)


def _like(hook: nn.Module, weight: Tensor) -> nn.Module:
    return hook.to(device=weight.device, dtype=weight.dtype)


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    target_modules: str | Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    blocks: Sequence[int] | None = None,
    alpha: float | None = None,
) -> list[LoRA]:
    """Attach a :class:`~backbone.LoRA` to each chosen linear layer, of any model.

    The layers are picked by ``target_modules``, as peft picks them (names,
    matched as the whole qualified name or its last parts, or one regular
    expression matched against the whole name), on any model; or, on a ViT
    with timm's layout (the package's, timm's own, or one made by
    :func:`~backbone.from_timm`), by ``sites`` out of
    :data:`~backbone.LINEAR_SITES` in ``blocks``. Each LoRA is made on its
    layer's device and dtype and lives at ``<layer>.tuning.lora``; the
    layer's own ``state_dict`` keys do not change. Nothing is attached if any
    layer already has one or any argument is wrong.

    Args:
        model: any module.
        rank: the rank of every delta.
        target_modules: which ``nn.Linear`` layers, by name.
        sites: which linear layers of each block (all four by default).
        blocks: which blocks; all when None.
        alpha: the scale's numerator (see :class:`~backbone.LoRA`).

    Returns:
        The new LoRA modules, in the order of the model's layers.

    Raises:
        TypeError: ``model`` is not a module, or has no ViT blocks and no
            ``target_modules`` was given.
        ValueError: a bad rank, site, block index or target, a target that is
            not ``nn.Linear``, or a layer that already holds a LoRA.

    Example:
        >>> import torch
        >>> from backbone import add_lora, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> before = net(x)
        >>> loras = add_lora(net, rank=4, sites=("qkv", "fc1"))
        >>> len(loras), torch.equal(net(x), before)   # B starts at zero
        (24, True)
        >>> [n for n, _ in net.named_parameters() if ".tuning." in n][:2]
        ['blocks.0.attn.qkv.tuning.lora.A', 'blocks.0.attn.qkv.tuning.lora.B']
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> len(add_lora(mlp, 2, target_modules=["0", "2"]))   # any model, layers by name
        2
    """
    layers = _layers(model, target_modules, sites, LINEAR_SITES, blocks, (nn.Linear,), "add_lora")
    if check_int(rank, "rank") < 1:
        raise ValueError(f"rank must be a positive int, got {rank}")
    for name, layer in layers:
        if type(layer) is not nn.Linear:
            # A subclass may not compute its output from its forward (MultiheadAttention reads out_proj.weight).
            raise ValueError(f"add_lora: {name} is a {type(layer).__name__}, not an nn.Linear; pick nn.Linear layers")
    _check_free(layers, "lora", "add_lora")
    made = []
    for _, layer in layers:
        linear = cast(nn.Linear, layer)
        with torch.inference_mode(False):  # trainable factors, even when attached inside inference mode
            made.append((layer, _like(LoRA(linear.in_features, linear.out_features, rank, alpha), linear.weight)))
    for layer, lora in made:
        _sites.attach(layer, "lora", lora)
    return [cast(LoRA, lora) for _, lora in made]


def add_adapters(
    model: nn.Module,
    bottleneck: int,
    *,
    mode: str = "parallel",
    blocks: Sequence[int] | None = None,
    target_modules: str | Sequence[str] | None = None,
    scale: float | str = 1.0,
    dropout: float = 0.0,
    norm: str = "none",
) -> list[Adapter]:
    """Attach an :class:`~backbone.Adapter` to blocks of the package's ViT, or to named modules of any model.

    With ``blocks`` (the package's :class:`~backbone.VisionTransformer`),
    each adapter sits beside (or after) a block's MLP as AdaptFormer puts
    it, at ``blocks.{i}.tuning.adapter``. With ``target_modules`` (any
    model), each picked module ``m`` gets ``m(x) + adapter(x)``
    (``'parallel'``) or ``m(x) + adapter(m(x))`` (``'sequential'``), the
    adapter at ``<module>.tuning.adapter``: on a timm ViT's
    ``blocks.{i}.mlp`` that is an adapter beside the MLP fed the normalised
    tokens the MLP sees.

    Args:
        model: a :class:`~backbone.VisionTransformer`, or any module with
            ``target_modules``.
        bottleneck: the adapters' hidden width.
        mode: ``'parallel'`` or ``'sequential'`` (see :class:`~backbone.Adapter`).
        blocks: which blocks of the package's ViT; all when None.
        target_modules: which modules, by name (as for :func:`~backbone.add_lora`).
        scale: the factor on each adapter's output, or ``'learnable'``.
        dropout: the adapters' dropout (see :class:`~backbone.Adapter`).
        norm: where each adapter has a LayerNorm: ``'none'``, ``'in'``, ``'out'``.

    Returns:
        The new adapters, in the model's order.

    Raises:
        TypeError: ``model`` is not the package's ViT and no
            ``target_modules`` was given.
        ValueError: a bad size, mode, block index or target, a module whose
            input and output widths differ (``'parallel'``), or a place
            already taken.

    Example:
        >>> from backbone import add_adapters, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> len(add_adapters(net, 16, blocks=[10, 11])), net.blocks[11].tuning.adapter.up.weight.shape
        (2, torch.Size([192, 16]))
    """
    if target_modules is not None:
        if blocks is not None:
            raise ValueError("add_adapters: give target_modules or blocks, not both")
        layers = select_sites(
            check_module(model, " as add_adapters's model"), target_modules, (nn.Module,), "add_adapters"
        )
        _check_free(layers, "adapter", "add_adapters")
        made = []
        for name, layer in layers:
            width = _width(layer, "add_adapters", name, "out")
            if mode == "parallel" and _width(layer, "add_adapters", name, "in") != width:
                raise ValueError(f"add_adapters: a parallel adapter needs {name}'s input and output widths equal")
            made.append((layer, Adapter(width, bottleneck, mode, scale, dropout=dropout, norm=norm)))
        with torch.inference_mode(False):
            for layer, hook in made:
                _like(hook, _reference(layer, model))
        for layer, hook in made:
            _sites.attach(layer, "adapter", hook)
        return [hook for _, hook in made]
    if blocks is not None and not isinstance(getattr(model, "tuning", None), nn.ModuleDict):
        raise TypeError(
            f"add_adapters: blocks= places AdaptFormer adapters in the package's VisionTransformer, got "
            f"{type(model).__name__}; on any model, pass target_modules (for a timm ViT, ['mlp'] puts one beside "
            "each block's MLP, fed the tokens the MLP sees)"
        )
    all_blocks = _vit_blocks(model, "add_adapters")
    dim = cast(nn.LayerNorm, all_blocks[0].norm1).normalized_shape[0]
    chosen = _chosen_blocks(blocks, len(all_blocks), "add_adapters")
    for i in chosen:
        if "adapter" in all_blocks[i].tuning:
            raise ValueError(f"add_adapters: block {i} already has 'adapter' attached; remove_tuning first")
    with torch.inference_mode(False):
        new = [(i, Adapter(dim, bottleneck, mode, scale, dropout=dropout, norm=norm)) for i in chosen]
        for i, adapter in new:
            _like(adapter, all_blocks[i].mlp.fc1.weight)
    for i, adapter in new:
        # A hook takes the mode of the block it joins (a fresh module is in training mode: its dropout would run
        # in a model that was put in eval mode).
        all_blocks[i].tuning["adapter"] = adapter.train(all_blocks[i].training)
    return [adapter for _, adapter in new]


def add_ssf(
    model: nn.Module,
    *,
    target_modules: str | Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    blocks: Sequence[int] | None = None,
) -> list[SSF]:
    """Attach an :class:`~backbone.SSF` after each chosen layer (a Linear or LayerNorm), of any model.

    The layers are picked as for :func:`~backbone.add_lora`: by
    ``target_modules`` on any model, or by ``sites`` out of
    :data:`~backbone.SSF_SITES` in ``blocks`` on a ViT with timm's layout.
    Each lives at ``<layer>.tuning.ssf``.

    Args:
        model: any module.
        target_modules: which ``nn.Linear`` or ``nn.LayerNorm`` layers, by name.
        sites: which outputs of each block (all six by default).
        blocks: which blocks; all when None.

    Returns:
        The new modules, in the order of the model's layers.

    Raises:
        TypeError: ``model`` is not a module, or has no ViT blocks and no
            ``target_modules`` was given.
        ValueError: a bad site, block index or target, or a place already taken.

    Example:
        >>> from backbone import add_ssf, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> len(add_ssf(net)), net.blocks[0].mlp.fc1.tuning.ssf.scale.shape
        (72, torch.Size([768]))
    """
    layers = _layers(model, target_modules, sites, SSF_SITES, blocks, (nn.Linear, nn.LayerNorm), "add_ssf")
    _check_free(layers, "ssf", "add_ssf")
    with torch.inference_mode(False):
        made = [
            (layer, _like(SSF(_width(layer, "add_ssf", name, "out")), _reference(layer, model)))
            for name, layer in layers
        ]
    for layer, ssf in made:
        _sites.attach(layer, "ssf", ssf)
    return [cast(SSF, ssf) for _, ssf in made]


def add_prompts(model: nn.Module, length: int, *, blocks: Sequence[int] = (0,)) -> PromptTokens:
    """Attach :class:`~backbone.PromptTokens` (at ``tuning.prompts``): shallow with ``blocks=(0,)``, deep with more.

    Args:
        model: a :class:`~backbone.VisionTransformer`.
        length: prompt tokens per block.
        blocks: before which blocks, in increasing order.

    Returns:
        The new prompts.

    Raises:
        TypeError: ``model`` is not a VisionTransformer.
        ValueError: a bad length or block index, or prompts already
            attached.

    Example:
        >>> import torch
        >>> from backbone import add_prompts, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> prompts = add_prompts(net, 5)
        >>> net.forward_features(torch.zeros(1, 3, 32, 32)).shape   # class token, 5 prompts, 64 patches
        torch.Size([1, 70, 192])
    """
    all_blocks = _vit_blocks(model, "add_prompts")
    chosen = _chosen_blocks(blocks, len(all_blocks), "add_prompts")
    dim = cast(nn.LayerNorm, all_blocks[0].norm1).normalized_shape[0]
    tuning = cast(nn.ModuleDict, model.tuning)
    if "prompts" in tuning:
        raise ValueError("add_prompts: the model already has prompts attached; remove_tuning first")
    with torch.inference_mode(False):
        prompts = PromptTokens(length, dim, chosen)
        _like(prompts, all_blocks[0].attn.qkv.weight)
    tuning["prompts"] = prompts.train(tuning.training)
    return prompts


def remove_tuning(model: nn.Module) -> None:
    """Detach every tuning hook, so that the model is again exactly the plain one.

    LoRA deltas still merged into the weights are unmerged first.
    ``requires_grad`` is left as it is: after :func:`~backbone.freeze_base`,
    call ``model.requires_grad_(True)`` to train the whole model again.

    Args:
        model: any module (the package's ViT, a timm model, ...).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a merged layer's weight changed since the merge (see
            :func:`~backbone.unmerge_lora`); nothing is removed then.

    Example:
        >>> import torch
        >>> from backbone import add_lora, add_prompts, remove_tuning, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> keys = list(net.state_dict())
        >>> _ = add_lora(net, 2), add_prompts(net, 3)
        >>> remove_tuning(net)
        >>> list(net.state_dict()) == keys
        True
    """
    module = check_module(model, " as remove_tuning's model")
    unmerge_lora(module)
    _sites.detach_all(module)
    for sub in module.modules():
        if isinstance(sub, VisionTransformer):  # the package's ViT: its blocks' adapters and its prompts
            sub.tuning.clear()
            for block in sub.blocks:
                cast(nn.ModuleDict, block.tuning).clear()


def _loras(model: nn.Module, what: str) -> list[tuple[nn.Linear, LoRA]]:
    module = check_module(model, f" as {what}'s model")
    return [
        (layer, lora)
        for _, layer, lora in _sites.sites_with(module, "lora")
        if isinstance(lora, LoRA) and isinstance(layer, nn.Linear)
    ]


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Add every attached LoRA's delta into its layer's weight; the model then skips the LoRA modules.

    The outputs stay the same up to rounding (the merged weight is one
    rounded sum). The weight before the merge is kept by the LoRA, so that
    :func:`~backbone.unmerge_lora` restores it bit for bit. Deltas already merged are
    left alone.

    Args:
        model: any module with LoRA modules attached by :func:`~backbone.add_lora`.

    Returns:
        How many deltas were merged by this call.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: the weights hold no data (meta) or cannot be written here
            (inference tensors outside inference mode).

    Example:
        >>> import torch
        >>> from backbone import add_lora, merge_lora, unmerge_lora, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10).eval()
        >>> for lora in add_lora(net, 4, sites=["qkv"]):
        ...     _ = torch.nn.init.normal_(lora.B, std=0.1)
        >>> weight = net.blocks[0].attn.qkv.weight.clone()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> before = net(x)
        >>> merge_lora(net), torch.allclose(net(x), before, atol=1e-5)
        (12, True)
        >>> unmerge_lora(net), torch.equal(net.blocks[0].attn.qkv.weight, weight)
        (12, True)
    """
    pairs = [(layer, lora) for layer, lora in _loras(model, "merge_lora") if not lora.merged]
    every = _loras(model, "merge_lora")
    for layer, _ in pairs:
        sharing = [other for other, _ in every if other is not layer and other.weight is layer.weight]
        if sharing:
            raise ValueError(
                "merge_lora: two layers with a LoRA share one weight, which cannot hold both deltas; "
                "merge is refused (their LoRA modules still apply unmerged)"
            )
        if layer.weight.device.type == "meta":
            raise ValueError("merge_lora: the model is on the meta device and holds no weights to merge into")
        _check_writable_weight(layer, "merge_lora")
    for layer, lora in pairs:
        lora._unmerged_weight = layer.weight.detach().clone()
        lora._merged_A, lora._merged_B = lora.A.detach().clone(), lora.B.detach().clone()
        layer.weight.add_(lora.delta().to(layer.weight.dtype))
        lora._merge_stamp = (_digest(layer.weight), layer.weight.dtype)
        lora.merged = True
    return len(pairs)


def _check_writable_weight(layer: nn.Linear, what: str) -> None:
    # torch writes an inference tensor in place and only then refuses, outside inference mode: check first.
    if layer.weight.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            f"{what}: the weights are inference tensors (the model was made under torch.inference_mode()) and "
            "cannot be written outside inference mode; call it inside torch.inference_mode(), or build the model "
            "outside it"
        )


def _digest(t: Tensor) -> str:
    """A SHA-256 of a tensor's values, byte for byte: any write shows, ``.data`` writes included."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def _unchanged_since_merge(layer: nn.Linear, lora: LoRA) -> bool:
    """Whether ``layer.weight`` still holds the values merge_lora wrote (moved, copied or converted, perhaps)."""
    weight, kept, stamp = layer.weight.detach(), lora._unmerged_weight, lora._merge_stamp
    merged_a, merged_b = lora._merged_A, lora._merged_B
    if kept is None or stamp is None or kept.shape != weight.shape or merged_a is None or merged_b is None:
        return False
    digest, merged_in = stamp
    if weight.dtype == merged_in:
        return _digest(weight) == digest
    back = weight.to(merged_in)
    if torch.finfo(weight.dtype).eps <= torch.finfo(merged_in).eps:
        # Converted to a finer dtype: converting back is exact, and the values must round-trip through it.
        return bool(torch.equal(back.to(weight.dtype), weight)) and _digest(back) == digest
    # Converted to a coarser dtype: each merged value, up to the rounding of it and of the kept weight there.
    delta = (merged_b.double() @ merged_a.double()) * lora.scale
    expected = kept.double() + delta
    eps = torch.finfo(weight.dtype).eps
    # The factors were rounded too: the delta's error is bounded by eps times |B| @ |A|, element by element.
    spread = (merged_b.double().abs() @ merged_a.double().abs()) * abs(lora.scale)
    bound = eps * (expected.abs() + kept.double().abs() + 2 * spread) + torch.finfo(weight.dtype).tiny
    differs = (weight.double() - expected).abs() > bound
    return not bool((differs & ~(weight.isnan() & expected.isnan())).any())


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`~backbone.merge_lora`: each merged layer gets back its weight from before the merge, bit for bit.

    The weight must not have been written while merged (an optimizer step
    on the merged model, a ``load_state_dict``, a write through ``.data``):
    the delta could then no longer be taken out exactly, so the call refuses
    and changes nothing. A write is found by value: the merged weight's
    bytes are compared with a digest kept at the merge, so any change
    shows, however it was made. Training the LoRA factors while merged is
    fine (the layer gets back its old weight, and the LoRA its new factors),
    and so is moving, copying or converting the model (``.to(device)``, a
    deep copy, ``.double()``): the kept weight follows the model. After a
    conversion to a finer dtype the check stays exact; after one to a
    coarser dtype (``.half()``), a change smaller than that dtype's rounding
    cannot be told from the rounding and is not detected. A conversion to a
    coarser dtype and back (``.half().float()``) rounds the weight, which is
    a change, and is refused.

    Args:
        model: any module with LoRA modules attached by :func:`~backbone.add_lora`.

    Returns:
        How many deltas were unmerged.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a merged weight changed since the merge.

    Example:
        >>> from backbone import add_lora, unmerge_lora, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> _ = add_lora(net, 2)
        >>> unmerge_lora(net)   # nothing was merged
        0
    """
    pairs = [(layer, lora) for layer, lora in _loras(model, "unmerge_lora") if lora.merged]
    for layer, lora in pairs:
        kept = lora._unmerged_weight
        if layer.weight.device.type == "meta" or (kept is not None and kept.device.type == "meta"):
            raise ValueError("unmerge_lora: the model is on the meta device and holds no weights to unmerge")
        if kept is None or kept.device != layer.weight.device or kept.dtype != layer.weight.dtype:
            raise ValueError(
                "unmerge_lora: a merged layer no longer matches the weight kept at the merge (the layer and its LoRA "
                "were moved or converted apart); nothing was unmerged"
            )
        _check_writable_weight(layer, "unmerge_lora")
        if not _unchanged_since_merge(layer, lora):
            raise ValueError(
                "unmerge_lora: a merged weight changed since merge_lora (an optimizer step, a load, a write "
                "through .data?), so the delta cannot be taken out exactly; nothing was unmerged"
            )
    for layer, lora in pairs:
        layer.weight.copy_(cast(Tensor, lora._unmerged_weight))
        lora._unmerged_weight = lora._merged_A = lora._merged_B = None
        lora._merge_stamp = None
        lora.merged = False
    return len(pairs)


def is_tuning_parameter(name: str, parameter: nn.Parameter | None = None) -> bool:
    """Whether a parameter name is a tuning hook's: it starts with ``tuning.`` or contains ``.tuning.``.

    Its signature fits ``select=``, so ``get_grads(net, select=is_tuning_parameter)``
    reads the hooks' gradients whatever ``requires_grad`` says.

    Args:
        name: the parameter's dotted name in the model.
        parameter: ignored; there so that the function is a ``select=``
            predicate.

    Returns:
        True for the hooks' parameters.

    Example:
        >>> from backbone import is_tuning_parameter
        >>> is_tuning_parameter("blocks.3.tuning.lora_qkv.A"), is_tuning_parameter("blocks.3.attn.qkv.weight")
        (True, False)
    """
    if not isinstance(name, str):
        raise TypeError(f"is_tuning_parameter expects a parameter name (str), got {type(name).__name__}")
    return name.startswith("tuning.") or ".tuning." in name


def freeze_base(model: nn.Module, *, train_head: bool = False) -> list[str]:
    """Leave only the tuning hooks (and the head, if asked) trainable: ``requires_grad`` off everywhere else.

    With the base frozen, ``select="trainable"`` in the flat operations
    covers exactly the hooks' parameters (and the head's).

    Args:
        model: any module; with ``train_head``, one with ``get_classifier()``
            (a backbone) or a ``head``.
        train_head: keep the classifier trainable too.

    Returns:
        The names of the parameters left trainable, in the model's order.

    Raises:
        TypeError: ``model`` is not a VisionTransformer, or ``train_head``
            is not a bool.

    Example:
        >>> from backbone import add_lora, freeze_base, get_params, vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> _ = add_lora(net, 4, sites=["qkv"])
        >>> names = freeze_base(net, train_head=True)
        >>> names[:2], names[-2:], get_params(net, select="trainable").numel()
        (['blocks.0.attn.qkv.tuning.lora.A', 'blocks.0.attn.qkv.tuning.lora.B'], ['head.weight', 'head.bias'], 38794)
    """
    module = check_module(model, " as freeze_base's model")
    check_bool("train_head", train_head)
    head: set[int] = set()
    if train_head:
        get_classifier = getattr(module, "get_classifier", None)
        classifier = get_classifier() if callable(get_classifier) else getattr(module, "head", None)
        if not isinstance(classifier, nn.Module):
            raise TypeError(
                f"freeze_base: train_head=True needs get_classifier() or a head, {type(module).__name__} has neither"
            )
        head = {id(p) for p in classifier.parameters()}
    trainable = []
    for name, parameter in module.named_parameters():
        keep = is_tuning_parameter(name) or id(parameter) in head
        parameter.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable
