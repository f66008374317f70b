"""Vision Transformers whose parameters have timm's names, so that timm checkpoints load.

The layout follows the original ViT (a class token, learned absolute position
embeddings, pre-norm blocks, a final LayerNorm, the class token as features),
with the module names timm's ``vision_transformer.py`` uses: a checkpoint of
``vit_tiny_patch16_224`` (and the others below) loads with
``load_state_dict`` and gives the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import (
    check_batched,
    check_bool,
    check_input,
    check_num_classes,
    check_output_fmt,
    check_per_block,
    check_positive_ints,
)
from ..base import BackboneOutput, MammothBackbone, ReturnType, check_returnt, feature_take_indices
from ..registry import register_backbone
from ..sites import call_deltas, check_delta

__all__ = [
    "VisionTransformer",
    "vit_base_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch4_32",
    "vit_tiny_patch16_224",
]


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to ``embed_dim``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(p * self.patch_size for p in self.grid_size):
            expected = self.grid_size[0] * self.patch_size
            raise ValueError(f"expected images of {expected}x{expected} pixels, got {x.shape[-2]}x{x.shape[-1]}")
        return cast(Tensor, self.proj(x)).flatten(2).transpose(1, 2)  # [B, N, D]


_Delta = tuple[Tensor | None, Tensor]
"""A call-time ``AB`` delta for one layer, checked: ``(A or None, B)``."""


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, prefix: Tensor | None = None, value: Tensor | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        heads = self.num_heads
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        if value is not None:
            # value: [batch, dim], added to every token's value vector (STAR-Prompt's second stage).
            v = v + value.reshape(batch, heads, 1, dim // heads)
        if prefix is not None:
            # prefix: [batch, 2, length, dim], keys then values, put before
            # the projected keys and values (prefix tuning).
            pk, pv = prefix.reshape(batch, 2, -1, heads, dim // heads).permute(1, 0, 3, 2, 4)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return cast(Tensor, self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then an MLP, each with a residual connection.

    ``tuning`` holds the AdaptFormer adapter attached to this block (see
    :func:`~backbone.add_adapters`); it is empty, and holds no parameters, by
    default. LoRA and SSF hooks live on the layers they act on.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.tuning = nn.ModuleDict()

    def forward(self, x: Tensor, prefix: Tensor | None = None, value: Tensor | None = None) -> Tensor:
        tuning = self.tuning
        x = x + self.attn(self.norm1(x), prefix, value)
        out = self.mlp(self.norm2(x))
        if "adapter" not in tuning:
            return x + out  # type: ignore[no-any-return]
        adapter = tuning["adapter"]
        return x + (out + adapter(x if adapter.mode == "parallel" else out))  # type: ignore[no-any-return]


PromptSource = Tensor | Callable[[Tensor], Tensor]
"""A block's prompts: tokens ``[B, L, D]`` (or ``[L, D]``), or a function of the block's input tokens giving them."""

PROMPT_MODES: tuple[str, ...] = ("replace", "add")
GLOBAL_POOLS: tuple[str, ...] = ("token", "avg", "prompt", "token+prompt")
FULL_FORMATS: tuple[str, ...] = ("NCHW", "NLC", "mammoth")


class _CallInputs(NamedTuple):
    """What a call adds, checked and keyed by block index.

    Prompts ``[B, L, D]`` (or functions of the block's input), prefixes
    ``[B, 2, L, D]``, deltas, value offsets ``[B, D]``, and how prompts combine.
    """

    prompts: dict[int, PromptSource]
    prefixes: dict[int, Tensor]
    ab: dict[int, dict[str, _Delta]]
    values: dict[int, Tensor]
    prompt_mode: str
    prompt_pos: Tensor | None


class VisionTransformer(MammothBackbone):
    """A Vision Transformer with a class token; parameter names as in timm.

    The stages are the transformer blocks. :meth:`forward_features` gives the
    token sequence ``[B, 1 + N, D]`` after the final LayerNorm (the class
    token first); :meth:`forward_head` takes the class token as the features
    ``[B, D]``; ``returnt='full'`` gives the output of every block as a map
    ``[B, D, H/p, W/p]`` (the patch tokens, class token left out), as timm's
    :meth:`forward_intermediates` does by default.

    Args:
        img_size: the side of the (square) input images.
        patch_size: the side of each patch; ``img_size`` must be a multiple.
        num_classes: the number of logits.
        embed_dim: ``D``, the width of every token.
        depth: the number of blocks.
        num_heads: attention heads per block; must divide ``embed_dim``.
        mlp_ratio: the MLP's hidden width, as a multiple of ``embed_dim``.
        qkv_bias: whether the ``qkv`` projection has a bias.
        in_chans: the channels of the input images.

    Raises:
        ValueError: a size is not a positive int, ``img_size`` is not a
            multiple of ``patch_size``, or ``num_heads`` does not divide
            ``embed_dim``.

    Example:
        >>> import torch
        >>> from backbone import VisionTransformer
        >>> net = VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=2, num_heads=2)
        >>> logits, stages = net(torch.zeros(2, 3, 32, 32), returnt="full")
        >>> logits.shape, [tuple(s.shape) for s in stages]
        (torch.Size([2, 5]), [(2, 24, 4, 4), (2, 24, 4, 4)])
        >>> net.forward_features(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 17, 24])
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        in_chans: int = 3,
        *,
        global_pool: str = "token",
        norm_eps: float = 1e-6,
    ) -> None:
        check_positive_ints(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            in_chans=in_chans,
        )
        check_num_classes(num_classes)
        check_bool("qkv_bias", qkv_bias)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or not 0 < mlp_ratio < math.inf:
            raise ValueError(f"mlp_ratio must be a positive finite number, got {mlp_ratio!r}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give the MLP at least one hidden unit, got {mlp_ratio!r} of {embed_dim}")
        if img_size % patch_size:
            raise ValueError(f"img_size must be a multiple of patch_size, got {img_size} and {patch_size}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, GLOBAL_POOLS))}, got {global_pool!r}")
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, int | float) or not 0 < norm_eps < math.inf:
            raise ValueError(f"norm_eps must be a positive finite number, got {norm_eps!r}")
        super().__init__()
        self.return_prerelu = False
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.global_pool = global_pool
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, float(norm_eps)) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=float(norm_eps))
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.feature_dim = embed_dim
        self.feature_info = [
            {"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"} for i in range(depth)
        ]
        # Model-level tuning hooks (prompt tokens); empty, with no parameters, by default.
        self.tuning = nn.ModuleDict()
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated-normal weights of standard deviation 0.02 (two standard
        # deviations either side) and zero biases: the usual ViT recipe.
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                self.init_classifier(module)
        fan_in = self.patch_embed.proj.in_channels * self.patch_embed.patch_size**2
        nn.init.trunc_normal_(self.patch_embed.proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(cast(Tensor, self.patch_embed.proj.bias))

    def init_classifier(self, classifier: nn.Linear) -> None:
        """Truncated-normal weights (standard deviation 0.02), zero bias: how every linear layer here starts.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> net.reset_classifier(3)
            >>> torch.equal(net.head.bias, torch.zeros(3)), bool(net.head.weight.abs().max() <= 0.04)
            (True, True)
        """
        nn.init.trunc_normal_(classifier.weight, std=0.02, a=-0.04, b=0.04)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)

    def get_classifier(self) -> nn.Module:
        """Return ``head``, timm's name for the classifier.

        Example:
            >>> from backbone import vit_tiny_patch4_32
            >>> vit_tiny_patch4_32(10).get_classifier()
            Linear(in_features=192, out_features=10, bias=True)
        """
        return self.head

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        """The classifier under the contract's name; the module itself is ``head``, as in timm.

        Assigning ``classifier`` assigns ``head``, so the ``state_dict`` keys
        stay timm's.

        Example:
            >>> from torch import nn
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> net.classifier is net.head
            True
            >>> net.classifier = nn.Linear(192, 3)
            >>> net.head.out_features, "classifier.weight" in net.state_dict()
            (3, False)
        """
        return self.head

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__("head" if name == "classifier" else name, value)

    @property  # type: ignore[misc]
    def num_classes(self) -> int:
        """The number of logits (0 after ``reset_classifier(0)``).

        Example:
            >>> from backbone import vit_tiny_patch4_32
            >>> vit_tiny_patch4_32(10).num_classes
            10
        """
        out = getattr(self.head, "out_features", 0)
        return out if isinstance(out, int) and not isinstance(out, bool) else 0

    def set_return_prerelu(self, enable: bool = True) -> None:
        """Accepted for methods that ask for pre-activation stages (TwF, LiDER); the outputs do not change.

        A stage here is a pre-norm transformer block, which ends in a residual
        sum with no activation after it, so its output *is* its
        pre-activation: ``'full'`` gives the same tensors either way.

        Args:
            enable: turn the pre-activation outputs on or off.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10).eval()
            >>> x = torch.randn(1, 3, 32, 32)
            >>> _, post = net(x, returnt="full")
            >>> net.set_return_prerelu(True)
            >>> _, pre = net(x, returnt="full")
            >>> all(torch.equal(a, b) for a, b in zip(pre, post))
            True
        """
        check_bool("enable", enable)
        self.return_prerelu = enable

    def _embed(self, x: Tensor) -> Tensor:
        proj = self.patch_embed.proj
        check_input(self, x, proj.weight, channels=proj.in_channels)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        AB: Mapping[int, Mapping[str, Any]] | str | None = None,
        returnt: ReturnType = "out",
        *,
        prompts: PromptSource | Mapping[int, PromptSource] | None = None,
        prompt_mode: str = "replace",
        prompt_pos: Tensor | str | None = None,
        prefixes: Mapping[int, Tensor] | None = None,
        values: Mapping[int, Tensor] | None = None,
        full_fmt: str = "NCHW",
    ) -> BackboneOutput:
        """Run the ViT and return what ``returnt`` selects, with prompts, prefixes or deltas given at the call.

        The second argument is Mammoth's: ``net(x, AB)`` and
        ``net(x, AB, returnt)`` work as on Mammoth's ViT, and
        ``net(x, "features")`` as on every backbone (a string there is
        ``returnt``). The keyword arguments are for methods that choose what
        to add per call or per sample (a prompt pool, a LoRA per task);
        hooks that stay with the model are attached with
        :mod:`backbone.tuning` instead. Block indices count from 0. Tensors
        are checked before anything runs; what a prompt function returns is
        checked when it returns.

        Args:
            x: the input batch ``[B, C, H, W]``.
            AB: Mammoth's low-rank deltas, ``{block: {layer: delta}}`` with
                ``layer`` one of ``'qkv'``, ``'proj'``, ``'fc1'``, ``'fc2'``
                and ``delta`` a weight delta ``B`` (``[..., out, in]``),
                ``{"B": B}`` (the same), or ``{"A": A, "B": B}`` (``A``
                ``[..., r, in]``, ``B`` ``[..., out, r]``, the delta
                ``B @ A``). The layer computes ``x @ (W + delta).T + b``;
                leading dimensions of the delta broadcast against
                ``[B, 1]`` and are summed, as in Mammoth.
            returnt: ``'out'``, ``'features'``, ``'both'`` or ``'full'``, as
                for every backbone; ``full_fmt`` says what ``'full'`` gives.
            prompts: tokens put after the class token: one tensor (before
                block 0) or ``{block: prompts}``. Each is ``[B, L, D]``, or
                ``[L, D]`` / ``[1, L, D]`` for the same prompts on every
                sample, or a function that takes the block's input tokens
                ``[B, 1 + P + N, D]`` (class token, the ``P`` prompts present,
                patches) and returns them (DAP's prompts made from the
                block's input; at block 0 it sees the embedding's output).
            prompt_mode: ``'replace'`` (a block's prompts take the place of
                those present, VPT-deep; ``L = 0`` removes them) or ``'add'``
                (they join those present, in front of them, as DualPrompt's
                prompt tuning does).
            prompt_pos: position embeddings added to the prompts put in
                before block 0, as L2P adds its ``pos_embed`` rows:
                ``'class'`` (the class token's row for every prompt, what
                L2P's rows hold) or a tensor ``[L, D]``; none by default.
            prefixes: ``{block: tensor [B, 2, L, D]}`` (or ``[2, L, D]``):
                keys (index 0) and values (index 1) put before that block's
                projected keys and values, as DualPrompt and CODA-Prompt do.
            values: ``{block: tensor [B, D]}`` (or ``[D]``): added to the
                value vector of every token in that block's attention, per
                sample (STAR-Prompt's second stage).
            full_fmt: what ``'full'`` gives as stages: ``'NCHW'`` (timm's
                default, each block's patch tokens as a map ``[B, D, H/p,
                W/p]``), ``'NLC'`` (those tokens ``[B, N, D]``) or
                ``'mammoth'`` (Mammoth's ViT: each block's whole sequence
                ``[B, 1 + P + N, D]``, then the normed final one: depth + 1
                tensors).

        Returns:
            A tensor, or a tuple, as for every backbone.

        Raises:
            TypeError: an argument of the wrong type or dtype.
            ValueError: a bad ``returnt``, mode, block index, layer name or
                shape, or prompts given for a block whose prompts are
                attached.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10).eval()
            >>> x = torch.randn(2, 3, 32, 32)
            >>> tokens = net.forward_features(x, prompts=torch.zeros(5, 192))
            >>> tokens.shape                                 # class token, 5 prompts, 64 patches
            torch.Size([2, 70, 192])
            >>> delta = {"A": torch.zeros(4, 192), "B": torch.zeros(576, 4)}
            >>> torch.equal(net(x, {0: {"qkv": delta}}), net(x))   # Mammoth's net(x, AB)
            True
            >>> prefix = torch.zeros(2, 2, 3, 192)          # 3 key and 3 value tokens per sample
            >>> net(x, returnt="both", prefixes={0: prefix, 5: prefix})[1].shape
            torch.Size([2, 192])
            >>> _, stages = net(x, returnt="full", full_fmt="mammoth")
            >>> len(stages), stages[0].shape
            (13, torch.Size([2, 65, 192]))
        """
        if isinstance(AB, str):  # net(x, "features"): the backbone API's positional returnt
            if returnt != "out":
                raise TypeError(f"returnt given twice: {AB!r} as the second argument and {returnt!r} by name")
            AB, returnt = None, cast(ReturnType, AB)
        returnt = check_returnt(returnt)
        if full_fmt not in FULL_FORMATS:
            raise ValueError(f"full_fmt must be one of {', '.join(map(repr, FULL_FORMATS))}, got {full_fmt!r}")
        inputs = self._call_inputs(x, prompts, prefixes, AB, values, prompt_mode, prompt_pos)
        depth = len(self.blocks)
        wanted = set(range(depth)) if returnt == "full" else set()
        final, taken, prompted = self._run_blocks(x, inputs, depth - 1, wanted)
        final = self.norm(final)
        features = self._pool(final, prompted)
        if returnt == "features":
            return features
        logits = cast(Tensor, self.head(features))
        if returnt == "out":
            return logits
        if returnt == "both":
            return logits, features
        if full_fmt == "mammoth":
            return logits, [t for t, _ in taken] + [final]
        return logits, self._stages(x, taken, full_fmt)

    def forward_features(  # type: ignore[override]
        self,
        x: Tensor,
        AB: Mapping[int, Mapping[str, Any]] | None = None,
        return_all: bool = False,
        *,
        prompts: PromptSource | Mapping[int, PromptSource] | None = None,
        prompt_mode: str = "replace",
        prompt_pos: Tensor | str | None = None,
        prefixes: Mapping[int, Tensor] | None = None,
        values: Mapping[int, Tensor] | None = None,
    ) -> Tensor | list[Tensor]:
        """Return the token sequence ``[B, 1 + P + N, D]`` after the final LayerNorm.

        ``P`` is the number of prompt tokens present after the last block
        (0 without prompts). ``AB`` and ``return_all`` are Mammoth's
        positional arguments: with ``return_all``, the list of every
        block's output and then the normed final tokens (depth + 1 tensors),
        as Mammoth's ``forward_features(x, AB, return_all=True)`` gives. The
        keyword arguments are :meth:`forward`'s.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> net.forward_features(torch.zeros(1, 3, 32, 32)).shape
            torch.Size([1, 65, 192])
            >>> len(net.forward_features(torch.zeros(1, 3, 32, 32), {}, True))
            13
        """
        check_bool("return_all", return_all)
        inputs = self._call_inputs(x, prompts, prefixes, AB, values, prompt_mode, prompt_pos)
        depth = len(self.blocks)
        final, taken, _ = self._run_blocks(x, inputs, depth - 1, set(range(depth)) if return_all else set())
        final = cast(Tensor, self.norm(final))
        return [t for t, _ in taken] + [final] if return_all else final

    def _blocks(
        self, x: Tensor, inputs: _CallInputs, last: int, wanted: set[int]
    ) -> tuple[Tensor, list[tuple[Tensor, int]], int]:
        """Embed, then run blocks 0..``last``.

        Returns the last block's output, each wanted block's output with the
        number of prompt tokens in it, and the number of prompts at the end.
        Prompts sit right after the class token; in ``'add'`` mode a block's
        prompts go in front of those present (attention does not depend on
        the tokens' order, so this gives DualPrompt's tokens, the class
        token moved to the front).
        """
        batch = x.shape[0]
        x = self._embed(x)
        taken, prompted = [], 0
        for i, block in enumerate(list(self.blocks)[: last + 1]):
            prompt = inputs.prompts.get(i)
            if prompt is not None:
                if not isinstance(prompt, Tensor):
                    made = prompt(x)
                    prompt = check_batched(
                        made, batch, (None, self.feature_dim), self.cls_token, f"the prompts made for block {i}",
                        empty=True,
                    )  # fmt: skip
                if i == 0 and inputs.prompt_pos is not None:
                    if inputs.prompt_pos.shape[1] not in (1, prompt.shape[1]):
                        rows = inputs.prompt_pos.shape[1]
                        raise ValueError(f"prompt_pos must have one row per prompt ({prompt.shape[1]}), got {rows}")
                    prompt = prompt + inputs.prompt_pos
                if inputs.prompt_mode == "replace":
                    x = torch.cat([x[:, :1], prompt, x[:, 1 + prompted :]], dim=1)
                    prompted = prompt.shape[1]
                else:
                    x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
                    prompted += prompt.shape[1]
            x = block(x, inputs.prefixes.get(i), inputs.values.get(i))
            if i in wanted:
                taken.append((x, prompted))
        return x, taken, prompted

    def _run_blocks(
        self, x: Tensor, inputs: _CallInputs, last: int, wanted: set[int]
    ) -> tuple[Tensor, list[tuple[Tensor, int]], int]:
        """Embed, then run blocks 0..``last``, with the call's ``AB`` deltas on their layers (see ``_blocks``)."""
        layers: dict[nn.Module, _Delta] = {
            self._site_layer(i, site): delta for i, deltas in inputs.ab.items() for site, delta in deltas.items()
        }
        with call_deltas(layers):
            return self._blocks(x, inputs, last, wanted)

    def _site_layer(self, index: int, site: str) -> nn.Linear:
        block = cast(Block, self.blocks[index])
        return cast(nn.Linear, getattr(block.attn if site in ("qkv", "proj") else block.mlp, site))

    def _call_inputs(
        self,
        x: Tensor,
        prompts: object,
        prefixes: object,
        ab: object,
        values: object,
        prompt_mode: object,
        prompt_pos: object = None,
    ) -> _CallInputs:
        """Check the call-time prompts, prefixes, deltas and values against the batch; add the attached prompts."""
        proj = self.patch_embed.proj
        check_input(self, x, proj.weight, channels=proj.in_channels)
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {', '.join(map(repr, PROMPT_MODES))}, got {prompt_mode!r}")
        batch, depth, dim = x.shape[0], len(self.blocks), self.feature_dim
        given = check_per_block(prompts, depth, "prompts", lone_means_block_0=True)
        checked: dict[int, PromptSource] = {
            i: t
            if callable(t) and not isinstance(t, Tensor)
            else check_batched(t, batch, (None, dim), self.cls_token, f"prompts for block {i}", empty=True)
            for i, t in given.items()
        }
        if "prompts" in self.tuning:
            attached = cast(Any, self.tuning["prompts"])
            for k, i in enumerate(attached.blocks):
                if i in checked:
                    raise ValueError(f"prompts were given for block {i}, which has prompts attached (tuning.prompts)")
                checked[i] = attached.tokens[k].expand(batch, -1, -1)
        pre = {
            i: check_batched(t, batch, (2, None, dim), self.cls_token, f"prefixes for block {i}")
            for i, t in check_per_block(prefixes, depth, "prefixes").items()
        }
        offsets = {
            i: check_batched(t, batch, (dim,), self.cls_token, f"values for block {i}")
            for i, t in check_per_block(values, depth, "values").items()
        }
        deltas = {i: self._block_deltas(i, d, batch) for i, d in check_per_block(ab, depth, "AB").items()}
        position = self._prompt_pos(prompt_pos, checked.get(0))
        return _CallInputs(checked, pre, {i: d for i, d in deltas.items() if d}, offsets, prompt_mode, position)

    def _prompt_pos(self, given: object, first: PromptSource | None) -> Tensor | None:
        """The position embeddings ``[1, L, D]`` (or ``[1, 1, D]``, for every prompt) of the prompts before block 0."""
        if given is None:
            return None
        if first is None:
            raise ValueError("prompt_pos was given, but no prompts go in before block 0")
        if isinstance(given, str):
            if given != "class":
                raise ValueError(f"prompt_pos must be 'class', a tensor [L, D] or None, got {given!r}")
            return self.pos_embed[:, :1]
        length = first.shape[1] if isinstance(first, Tensor) else None
        t = check_batched(given, 1, (length, self.feature_dim), self.cls_token, "prompt_pos", empty=True)
        return t

    def _block_deltas(self, index: int, given: object, batch: int) -> dict[str, _Delta]:
        if not isinstance(given, Mapping):
            raise TypeError(f"AB[{index}] must map layer names to deltas, got {type(given).__name__}")
        block = cast(Block, self.blocks[index])
        layers = {"qkv": block.attn.qkv, "proj": block.attn.proj, "fc1": block.mlp.fc1, "fc2": block.mlp.fc2}
        deltas = {}
        for site, delta in given.items():
            if site not in layers:
                raise ValueError(f"AB[{index}] names layers out of {tuple(layers)}, got {site!r}")
            if delta is not None:
                deltas[site] = check_delta(delta, layers[site], f"AB[{index}][{site!r}]", batch)
        return deltas

    def _pool(self, x: Tensor, prompted: int) -> Tensor:
        """The features of tokens ``[B, 1 + P + N, D]`` with ``P = prompted``, as ``global_pool`` says."""
        pool = self.global_pool
        if pool == "token":
            return x[:, 0]
        if pool == "avg":
            return x[:, 1 + prompted :].mean(dim=1)
        if prompted == 0:
            raise ValueError(f"global_pool={pool!r} pools the prompt tokens, but the call has none")
        return x[:, 1 : 1 + prompted].mean(dim=1) if pool == "prompt" else x[:, : 1 + prompted].mean(dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False, *, num_prompts: int = 0) -> Tensor:
        """Pool the tokens as ``global_pool`` says (the class token by default), then classify.

        ``num_prompts`` is the number of prompt tokens after the class token
        in ``x`` (what ``'avg'``, ``'prompt'`` and ``'token+prompt'`` need).

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> tokens = net.forward_features(torch.zeros(1, 3, 32, 32))
            >>> net.forward_head(tokens, pre_logits=True).shape, net.forward_head(tokens).shape
            (torch.Size([1, 192]), torch.Size([1, 10]))
        """
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 0:
            raise ValueError(f"num_prompts must be a non-negative int, got {num_prompts!r}")
        check_bool("pre_logits", pre_logits)
        if not isinstance(x, Tensor):
            raise TypeError(f"forward_head expects the tokens as a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[2] != self.feature_dim or x.shape[1] < 1 + num_prompts:
            raise ValueError(
                f"forward_head expects tokens [B, 1 + P + N, {self.feature_dim}] with P = num_prompts = {num_prompts}, "
                f"got shape {tuple(x.shape)}"
            )
        if self.global_pool == "avg" and x.shape[1] == 1 + num_prompts:
            raise ValueError("global_pool='avg' pools the patch tokens, but the tokens hold none")
        x = self._pool(x, num_prompts)
        return x if pre_logits else cast(Tensor, self.head(x))

    def _stages(self, x: Tensor, taken: list[tuple[Tensor, int]], output_fmt: str) -> list[Tensor]:
        """The patch tokens of each taken block's output, as tokens ``[B, N, D]`` or maps ``[B, D, H/p, W/p]``."""
        tokens = [t[:, self.num_prefix_tokens + prompted :] for t, prompted in taken]
        if output_fmt == "NLC":
            return tokens
        grid = (x.shape[-2] // self.patch_embed.patch_size, x.shape[-1] // self.patch_embed.patch_size)
        return [t.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous() for t in tokens]

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        *,
        prompts: PromptSource | Mapping[int, PromptSource] | None = None,
        prompt_mode: str = "replace",
        prompt_pos: Tensor | str | None = None,
        prefixes: Mapping[int, Tensor] | None = None,
        AB: Mapping[int, Mapping[str, Any]] | None = None,
        values: Mapping[int, Tensor] | None = None,
    ) -> list[Tensor] | list[tuple[Tensor, Tensor]] | tuple[Tensor, list[Tensor]]:
        """Return the final tokens and the output of the blocks ``indices`` selects, as timm's ViT does.

        The arguments are timm's, in timm's order; see
        :meth:`MammothBackbone.forward_intermediates` for the common ones.

        Args:
            x: the input batch.
            indices: which blocks: all when None, the last ``n`` for an int,
                or a sequence of block indices.
            return_prefix_tokens: pair each intermediate with its class token
                and the prompt tokens present after that block,
                ``[B, 1 + P, D]``.
            norm: apply the final LayerNorm to the intermediates.
            stop_early: stop after the last selected block; the "final"
                output is then that block's output, normalised.
            output_fmt: ``'NCHW'`` (patch tokens as a map ``[B, D, H/p,
                W/p]``) or ``'NLC'`` (tokens ``[B, N, D]``); the class token
                is left out of either.
            intermediates_only: return only the intermediates.
            prompts: as for :meth:`forward`.
            prompt_mode: as for :meth:`forward`.
            prompt_pos: as for :meth:`forward`.
            prefixes: as for :meth:`forward`.
            AB: as for :meth:`forward`.
            values: as for :meth:`forward`.

        Returns:
            ``(final, intermediates)`` or the intermediates alone.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> last = net.forward_intermediates(torch.zeros(1, 3, 32, 32), indices=1, output_fmt="NLC")
            >>> last[0].shape, [tuple(t.shape) for t in last[1]]
            (torch.Size([1, 65, 192]), [(1, 64, 192)])
        """
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        for flag, value in (
            ("return_prefix_tokens", return_prefix_tokens),
            ("norm", norm),
            ("stop_early", stop_early),
            ("intermediates_only", intermediates_only),
        ):
            check_bool(flag, value)
        take, last = feature_take_indices(len(self.blocks), indices)
        inputs = self._call_inputs(x, prompts, prefixes, AB, values, prompt_mode, prompt_pos)
        final, taken, _ = self._run_blocks(x, inputs, last if stop_early else len(self.blocks) - 1, set(take))
        taken = [(self.norm(t) if norm else t, prompted) for t, prompted in taken]
        intermediates = self._stages(x, taken, output_fmt)
        result: list[Tensor] | list[tuple[Tensor, Tensor]] = intermediates
        if return_prefix_tokens:
            prefix = [t[:, : self.num_prefix_tokens + prompted] for t, prompted in taken]
            result = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return result
        return self.norm(final), result  # type: ignore[return-value]


def _vit(num_classes: int, **kwargs: Any) -> VisionTransformer:
    return VisionTransformer(num_classes=num_classes, **kwargs)


@register_backbone("vit-tiny-patch16-224", example_kwargs={"num_classes": 10}, example_input_shape=(3, 224, 224))
def vit_tiny_patch16_224(num_classes: int) -> VisionTransformer:
    """ViT-Tiny/16 at 224 px (``D`` = 192, 12 blocks, 3 heads): timm's ``vit_tiny_patch16_224``.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> from backbone import vit_tiny_patch16_224
        >>> sum(p.numel() for p in vit_tiny_patch16_224(1000).parameters())
        5717416
    """
    return _vit(num_classes, embed_dim=192, depth=12, num_heads=3)


@register_backbone("vit-small-patch16-224", example_kwargs={"num_classes": 10}, example_input_shape=(3, 224, 224))
def vit_small_patch16_224(num_classes: int) -> VisionTransformer:
    """ViT-Small/16 at 224 px (``D`` = 384, 12 blocks, 6 heads): timm's ``vit_small_patch16_224``.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> from backbone import vit_small_patch16_224
        >>> sum(p.numel() for p in vit_small_patch16_224(1000).parameters())
        22050664
    """
    return _vit(num_classes, embed_dim=384, depth=12, num_heads=6)


@register_backbone("vit-base-patch16-224", example_kwargs={"num_classes": 10}, example_input_shape=(3, 224, 224))
def vit_base_patch16_224(num_classes: int) -> VisionTransformer:
    """ViT-Base/16 at 224 px (``D`` = 768, 12 blocks, 12 heads): timm's ``vit_base_patch16_224``.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> from backbone import vit_base_patch16_224
        >>> sum(p.numel() for p in vit_base_patch16_224(1000).parameters())
        86567656
    """
    return _vit(num_classes, embed_dim=768, depth=12, num_heads=12)


@register_backbone("vit-tiny-patch4-32", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def vit_tiny_patch4_32(num_classes: int) -> VisionTransformer:
    """ViT-Tiny for 32 px images (CIFAR) with 4 px patches: 64 patches, ``D`` = 192, 12 blocks, 3 heads.

    It is timm's ``vit_tiny_patch16_224`` built with ``img_size=32, patch_size=4``.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> import torch
        >>> from backbone import vit_tiny_patch4_32
        >>> net = vit_tiny_patch4_32(10)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, len(net.feature_info)
        (torch.Size([2, 10]), 12)
    """
    return _vit(num_classes, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
