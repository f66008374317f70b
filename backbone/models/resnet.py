"""CIFAR-style ResNets, as continual learning uses them.

Unlike the ImageNet ResNets of torchvision, the stem is a single 3x3 stride-1
convolution with no max-pool, so a 32x32 input keeps its resolution through
the first stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, cast

from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_bool, check_input, check_output_fmt, check_positive_ints
from ..base import MammothBackbone, feature_take_indices, forward_stages
from ..registry import register_backbone

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "reduced_resnet18", "resnet18", "resnet34", "resnet50"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18 and -34).

    With ``return_prerelu`` set (see :meth:`ResNet.set_return_prerelu`), each
    forward keeps the block's output before its final ReLU (after the
    residual sum) as ``self.prerelu``, as Mammoth's blocks do.

    Args:
        in_planes: input channels.
        planes: output channels (times ``expansion``, which is 1).
        stride: stride of the first convolution.

    Example:
        >>> import torch
        >>> from backbone import BasicBlock
        >>> BasicBlock(16, 32, stride=2)(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    expansion: ClassVar[int] = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.return_prerelu = False
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Example:
            >>> import torch
            >>> from backbone import BasicBlock
            >>> BasicBlock(8, 8)(torch.zeros(1, 8, 4, 4)).shape
            torch.Size([1, 8, 4, 4])
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        if self.return_prerelu:
            self.prerelu = out
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 and 1x1 convolutions with a residual connection (ResNet-50).

    Like :class:`BasicBlock`, it keeps ``self.prerelu`` when ``return_prerelu`` is set.

    The stride sits on the 3x3 convolution, as in torchvision.

    Args:
        in_planes: input channels.
        planes: channels of the inner convolutions; the block outputs
            ``planes * expansion`` (4) channels.
        stride: stride of the 3x3 convolution.

    Example:
        >>> import torch
        >>> from backbone import Bottleneck
        >>> Bottleneck(16, 8, stride=2)(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    expansion: ClassVar[int] = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.return_prerelu = False
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Example:
            >>> import torch
            >>> from backbone import Bottleneck
            >>> Bottleneck(32, 8)(torch.zeros(1, 32, 4, 4)).shape
            torch.Size([1, 32, 4, 4])
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        if self.return_prerelu:
            self.prerelu = out
        return F.relu(out)


class ResNet(MammothBackbone):
    """A CIFAR-style ResNet: 3x3 stem, four stages, global average pooling, linear classifier.

    Stage ``i`` (from 1) has ``num_filters * 2**(i-1) * block.expansion``
    channels; stages 2 to 4 halve the resolution. ``returnt='full'`` gives
    ``(logits, [stem, stage1, stage2, stage3, stage4])``; for a 32x32 input
    their spatial sizes are 32, 32, 16, 8 and 4, as ``feature_info``
    says. :meth:`forward_features` gives the unpooled output of stage 4.

    Args:
        block: :class:`~backbone.BasicBlock` or :class:`~backbone.Bottleneck`.
        layers: the number of blocks in each of the four stages.
        num_classes: the number of logits.
        num_filters: the channels of the stem and the first stage.
        in_channels: the channels of the input images.

    Raises:
        TypeError: ``block`` is not :class:`~backbone.BasicBlock` or
            :class:`~backbone.Bottleneck` (or a subclass), or ``layers`` is
            not a sequence.
        ValueError: a count is not a positive int, or ``layers`` does not
            have four entries.

    Example:
        >>> import torch
        >>> from backbone import ResNet
        >>> from backbone import BasicBlock
        >>> net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5, num_filters=8)
        >>> logits, stages = net(torch.zeros(2, 3, 32, 32), returnt="full")
        >>> logits.shape, [s.shape[-1] for s in stages]
        (torch.Size([2, 5]), [32, 32, 16, 8, 4])
        >>> net.feature_dim
        64
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        num_filters: int = 64,
        in_channels: int = 3,
    ) -> None:
        if not (isinstance(block, type) and issubclass(block, (BasicBlock, Bottleneck))):
            raise TypeError(f"block must be the class BasicBlock or Bottleneck, got {block!r}")
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(f"layers must be a list of 4 positive ints (blocks per stage), got {type(layers).__name__}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of 4 stages, got {list(layers)!r}")
        check_positive_ints(num_classes=num_classes, num_filters=num_filters, in_channels=in_channels)
        for count in layers:
            check_positive_ints(layers=count)
        super().__init__()
        self.return_prerelu = False
        self.num_classes = num_classes
        self.num_filters = num_filters
        self.conv1 = conv3x3(in_channels, num_filters)
        self.bn1 = nn.BatchNorm2d(num_filters)
        self.act1 = nn.ReLU()
        self._in_planes = num_filters
        self.layer1 = self._make_stage(block, num_filters, layers[0], stride=1)
        self.layer2 = self._make_stage(block, num_filters * 2, layers[1], stride=2)
        self.layer3 = self._make_stage(block, num_filters * 4, layers[2], stride=2)
        self.layer4 = self._make_stage(block, num_filters * 8, layers[3], stride=2)
        self.feature_dim = num_filters * 8 * block.expansion
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.feature_info = [{"num_chs": num_filters, "reduction": 1, "module": "act1"}] + [
            {"num_chs": num_filters * 2**i * block.expansion, "reduction": 2**i, "module": f"layer{i + 1}"}
            for i in range(4)
        ]

    def _make_stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = []
        for s in [stride] + [1] * (blocks - 1):
            stage.append(block(self._in_planes, planes, s))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def set_return_prerelu(self, enable: bool = True) -> None:
        """Make ``'full'`` (and :meth:`forward_intermediates`) give each stage's output before its final ReLU.

        As Mammoth's ResNet does, for the methods that read pre-activations
        (TwF, LiDER): the stem's ``bn1(conv1(x))``, and the residual sum of the
        last block of each stage, which that block also keeps as
        ``layerN[-1].prerelu``. The logits and features do not change. Off, it
        costs nothing.

        Args:
            enable: turn the pre-activation outputs on or off.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> net = resnet18(10, num_filters=4).eval()
            >>> x = torch.randn(2, 3, 32, 32)
            >>> _, post = net(x, returnt="full")
            >>> net.set_return_prerelu(True)
            >>> _, pre = net(x, returnt="full")
            >>> all(torch.equal(p.relu(), q) for p, q in zip(pre, post))
            True
            >>> torch.equal(net.layer4[-1].prerelu, pre[-1])
            True
        """
        check_bool("enable", enable)
        self.return_prerelu = enable
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                module.return_prerelu = enable

    def _stages(self, stem_prerelu: list[Tensor] | None = None) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            out = self.bn1(self.conv1(x))
            if stem_prerelu is not None:
                stem_prerelu.append(out)
            return cast(Tensor, self.act1(out))

        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the unpooled output of stage 4, ``[B, feature_dim, H/8, W/8]``.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> resnet18(10, num_filters=4).forward_features(torch.zeros(2, 3, 32, 32)).shape
            torch.Size([2, 32, 4, 4])
        """
        check_input(self, x, self.conv1.weight, channels=self.conv1.in_channels)
        for stage in self._stages():
            x = stage(x)
        return x

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Return the output of stage 4 and the outputs of the stem and stages ``indices`` selects.

        See :meth:`MammothBackbone.forward_intermediates`; index 0 is the
        stem, 1 to 4 the stages, and there is no norm to apply.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> final, stages = resnet18(10, num_filters=4).forward_intermediates(torch.zeros(2, 3, 32, 32))
            >>> final.shape, len(stages)
            (torch.Size([2, 32, 4, 4]), 5)
        """
        check_output_fmt(output_fmt, ("NCHW",))
        check_input(self, x, self.conv1.weight, channels=self.conv1.in_channels)
        if not self.return_prerelu:
            return forward_stages(x, self._stages(), indices, stop_early, intermediates_only)
        stem: list[Tensor] = []
        result = forward_stages(x, self._stages(stem), indices, stop_early, False)
        final = cast("tuple[Tensor, list[Tensor]]", result)[0]
        taken = sorted(set(feature_take_indices(5, indices)[0]))
        pre = [stem[0] if i == 0 else getattr(self, f"layer{i}")[-1].prerelu for i in taken]
        return pre if intermediates_only else (final, pre)


@register_backbone("resnet18", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def resnet18(num_classes: int, num_filters: int = 64) -> ResNet:
    """ResNet-18 (basic blocks, 2-2-2-2); 11,173,962 parameters for 10 classes.

    Args:
        num_classes: the number of logits.
        num_filters: the channels of the first stage.

    Returns:
        The backbone.

    Example:
        >>> from backbone import resnet18
        >>> sum(p.numel() for p in resnet18(10).parameters())
        11173962
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, num_filters)


@register_backbone("reduced-resnet18", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def reduced_resnet18(num_classes: int) -> ResNet:
    """The reduced ResNet-18 of GEM: :func:`resnet18` with 20 filters; 1,094,750 parameters for 10 classes.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> from backbone import reduced_resnet18
        >>> sum(p.numel() for p in reduced_resnet18(10).parameters())
        1094750
    """
    return resnet18(num_classes, num_filters=20)


@register_backbone("resnet34", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def resnet34(num_classes: int, num_filters: int = 64) -> ResNet:
    """ResNet-34 (basic blocks, 3-4-6-3); 21,282,122 parameters for 10 classes.

    Args:
        num_classes: the number of logits.
        num_filters: the channels of the first stage.

    Returns:
        The backbone.

    Example:
        >>> from backbone import resnet34
        >>> sum(p.numel() for p in resnet34(10).parameters())
        21282122
    """
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, num_filters)


@register_backbone("resnet50", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def resnet50(num_classes: int, num_filters: int = 64) -> ResNet:
    """ResNet-50 (bottleneck blocks, 3-4-6-3); 23,520,842 parameters for 10 classes.

    Args:
        num_classes: the number of logits.
        num_filters: the inner channels of the first stage (its output has four times as many).

    Returns:
        The backbone.

    Example:
        >>> from backbone import resnet50
        >>> sum(p.numel() for p in resnet50(10).parameters())
        23520842
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, num_filters)
