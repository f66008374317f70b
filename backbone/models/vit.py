"""Vision Transformers whose parameters have timm's names, so that timm checkpoints load.

The layout follows the original ViT (a class token, learned absolute position
embeddings, pre-norm blocks, a final LayerNorm, the class token as features),
with the module names timm's ``vision_transformer.py`` uses: a checkpoint of
``vit_tiny_patch16_224`` (and the others below) loads with
``load_state_dict`` and gives the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_bool, check_input, check_output_fmt, check_positive_ints
from ..base import MammothBackbone, feature_take_indices
from ..registry import register_backbone

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


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))  # type: ignore[no-any-return]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class Block(nn.Module):
    """A pre-norm transformer block: attention, then an MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


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
    ) -> None:
        check_positive_ints(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            in_chans=in_chans,
        )
        if img_size % patch_size:
            raise ValueError(f"img_size must be a multiple of patch_size, got {img_size} and {patch_size}")
        super().__init__()
        self.return_prerelu = False
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.feature_dim = embed_dim
        self.feature_info = [
            {"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"} for i in range(depth)
        ]
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
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

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

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the token sequence ``[B, 1 + N, D]`` after the final LayerNorm.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> vit_tiny_patch4_32(10).forward_features(torch.zeros(1, 3, 32, 32)).shape
            torch.Size([1, 65, 192])
        """
        return cast(Tensor, self.norm(self.blocks(self._embed(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Take the class token as the features, then classify.

        Example:
            >>> import torch
            >>> from backbone import vit_tiny_patch4_32
            >>> net = vit_tiny_patch4_32(10)
            >>> tokens = net.forward_features(torch.zeros(1, 3, 32, 32))
            >>> net.forward_head(tokens, pre_logits=True).shape, net.forward_head(tokens).shape
            (torch.Size([1, 192]), torch.Size([1, 10]))
        """
        x = x[:, 0]
        return x if pre_logits else cast(Tensor, self.head(x))

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | list[tuple[Tensor, Tensor]] | tuple[Tensor, list[Tensor]]:
        """Return the final tokens and the output of the blocks ``indices`` selects, as timm's ViT does.

        The arguments are timm's, in timm's order; see
        :meth:`MammothBackbone.forward_intermediates` for the common ones.

        Args:
            x: the input batch.
            indices: which blocks: all when None, the last ``n`` for an int,
                or a sequence of block indices.
            return_prefix_tokens: pair each intermediate with its class token
                ``[B, 1, D]``.
            norm: apply the final LayerNorm to the intermediates.
            stop_early: stop after the last selected block; the "final"
                output is then that block's output, normalised.
            output_fmt: ``'NCHW'`` (patch tokens as a map ``[B, D, H/p,
                W/p]``) or ``'NLC'`` (tokens ``[B, N, D]``); the class token
                is left out of either.
            intermediates_only: return only the intermediates.

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
        take, last = feature_take_indices(len(self.blocks), indices)
        wanted = set(take)
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        x = self._embed(x)
        intermediates = []
        blocks = list(self.blocks)[: last + 1] if stop_early else list(self.blocks)
        for i, block in enumerate(blocks):
            x = block(x)
            if i in wanted:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [t[:, : self.num_prefix_tokens] for t in intermediates]
        intermediates = [t[:, self.num_prefix_tokens :] for t in intermediates]
        if output_fmt == "NCHW":
            grid = (height // self.patch_embed.patch_size, width // self.patch_embed.patch_size)
            intermediates = [t.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for t in intermediates]
        result: list[Tensor] | list[tuple[Tensor, Tensor]] = intermediates
        if return_prefix_tokens:
            result = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return result
        return self.norm(x), result  # type: ignore[return-value]


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
