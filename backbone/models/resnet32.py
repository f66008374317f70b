"""The CIFAR ResNet-32 of iCaRL, LUCIR, PODNet and DER, with the parameter names of Mammoth's ``resnet32``.

He et al.'s CIFAR design (section 4.2 of "Deep Residual Learning"): a 3x3
stem and three stages of five basic blocks with 16, 32 and 64 channels; a
stage that halves the resolution has a shortcut with no parameters, the
input subsampled and zero-padded with channels. The layer order is
Mammoth's (and iCaRL's): each convolution is followed by its ReLU and then
its BatchNorm, BatchNorm's eps is ``1e-4``, and the last block has no final
ReLU, so the features may be negative (as LUCIR wants for its cosine head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import check_bool, check_input, check_output_fmt, check_positive_ints
from ..base import MammothBackbone, feature_take_indices, forward_stages
from ..registry import register_backbone

__all__ = ["ResNet32", "resnet32"]

_EPS = 1e-4
_BLOCKS = 5  # per stage: 2 + 3 stages * 5 blocks * 2 convolutions = 32 layers


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class _Block(nn.Module):
    """conv, ReLU, BN, conv, BN, plus the shortcut, then a ReLU unless the block is the network's last.

    With ``return_prerelu`` set, it keeps the residual sum as ``self.prerelu``
    (for the last block, that is its output).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, last: bool) -> None:
        super().__init__()
        self.return_prerelu = False
        self.last = last
        self.stride = stride
        self.pad = (planes - in_planes) // 2
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, eps=_EPS)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_EPS)

    def _shortcut(self, x: Tensor) -> Tensor:
        # No parameters (so no state-dict keys, as in Mammoth): every other
        # row and column, the input channels in the middle of the wider
        # output, zeros on either side.
        if self.stride == 1:
            return x
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self._shortcut(x)
        if self.return_prerelu:
            self.prerelu = out
        return out if self.last else F.relu(out)


def _stage(in_planes: int, planes: int, stride: int, ends_without_relu: bool = False) -> nn.Sequential:
    blocks = [_Block(in_planes, planes, stride, last=False)]
    blocks += [_Block(planes, planes, 1, last=False) for _ in range(_BLOCKS - 1)]
    blocks[-1].last = ends_without_relu
    return nn.Sequential(*blocks)


class ResNet32(MammothBackbone):
    """ResNet-32 for 32x32 images: 3x3 stem, three stages of five basic blocks, average pooling, linear classifier.

    The state dict has exactly the keys of Mammoth's ``resnet32``
    (``conv1``, ``bn_initial``, ``layer1`` to ``layer3`` with blocks ``0``
    to ``4`` of ``conv1``, ``bn1``, ``conv2``, ``bn2``, then ``bn_final`` and
    ``classifier``), so a Mammoth checkpoint loads with ``load_state_dict``
    as it is, strictly, and gives the same outputs. Mammoth's ``bn_final`` is
    never applied; it is kept only so that the keys match both ways, and its
    weight and bias are frozen (``requires_grad=False``) so that optimizers,
    ``DistributedDataParallel`` and ``select='trainable'`` leave it out. It
    counts in the parameters, as in Mammoth.

    Each block is conv, ReLU, BatchNorm, conv, BatchNorm, plus the
    shortcut, then a ReLU, except the very last block (``layer3[4]``), which
    ends at the residual sum. Stages 2 and 3 halve the resolution; their
    first block's shortcut subsamples the input (every other row and column)
    and pads it with zero channels on either side. The features are the
    global average of the last stage's map, ``[B, 64]``: for a 32x32 input
    the same as Mammoth's ``AvgPool2d(8)``, and other sizes work too.

    ``returnt='full'`` gives ``(logits, [stem, layer1, layer2, layer3])``:
    the stem's output ``bn_initial(relu(conv1(x)))`` and each stage's; for a
    32x32 input their sizes are 32, 32, 16 and 8, as ``feature_info``
    says. (Mammoth's ``resnet32`` gives only the logits for ``'full'``.)

    The layers keep torch's default initialisation, as the package's other
    ResNets do. Mammoth initialises the convolutions He-normal instead; with
    BatchNorm's initial statistics (eval mode before any training) that
    doubles the activations' variance at every block, so an untrained
    network's logits are in the hundreds. Apply
    ``torch.nn.init.kaiming_normal_`` to the convolutions for Mammoth's
    initialisation.

    Args:
        num_classes: the number of logits.

    Raises:
        ValueError: ``num_classes`` is not a positive int.

    Example:
        >>> import torch
        >>> from backbone import ResNet32
        >>> net = ResNet32(num_classes=10)
        >>> logits, stages = net(torch.zeros(2, 3, 32, 32), returnt="full")
        >>> logits.shape, [tuple(s.shape[1:]) for s in stages]
        (torch.Size([2, 10]), [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)])
        >>> net.feature_dim, list(net.state_dict())[:3]
        (64, ['conv1.weight', 'bn_initial.weight', 'bn_initial.bias'])
    """

    def __init__(self, num_classes: int) -> None:
        check_positive_ints(num_classes=num_classes)
        super().__init__()
        self.return_prerelu = False
        self.conv1 = _conv3x3(3, 16)
        self.bn_initial = nn.BatchNorm2d(16, eps=_EPS)
        self.layer1 = _stage(16, 16, stride=1)
        self.layer2 = _stage(16, 32, stride=2)
        self.layer3 = _stage(32, 64, stride=2, ends_without_relu=True)
        self.bn_final = nn.BatchNorm2d(64, eps=_EPS).requires_grad_(False)
        self.feature_dim = 64
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.feature_info = [
            {"num_chs": 16, "reduction": 1, "module": "bn_initial"},
            {"num_chs": 16, "reduction": 1, "module": "layer1"},
            {"num_chs": 32, "reduction": 2, "module": "layer2"},
            {"num_chs": 64, "reduction": 4, "module": "layer3"},
        ]

    def set_return_prerelu(self, enable: bool = True) -> None:
        """Make ``'full'`` (and :meth:`forward_intermediates`) give each stage's output before its final ReLU.

        For the methods that read pre-activations (TwF, LiDER). Only
        ``layer1`` and ``layer2`` end in a ReLU: for them it is the residual
        sum of their last block, which that block also keeps as
        ``layerN[-1].prerelu``. The stem ends in its BatchNorm (its ReLU comes
        before it) and ``layer3`` in the residual sum, so for those two the
        stage is given as it is (and ``layer3[-1].prerelu`` is its output).
        The logits and features do not change. Off, it costs nothing.

        Args:
            enable: turn the pre-activation outputs on or off.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> import torch
            >>> from backbone import resnet32
            >>> net = resnet32(10).eval()
            >>> x = torch.randn(2, 3, 32, 32)
            >>> _, post = net(x, returnt="full")
            >>> net.set_return_prerelu(True)
            >>> _, pre = net(x, returnt="full")
            >>> [torch.equal(p, q) for p, q in zip(pre, post)]
            [True, False, False, True]
            >>> all(torch.equal(p.relu(), q) for p, q in zip(pre[1:3], post[1:3]))
            True
            >>> torch.equal(net.layer2[-1].prerelu, pre[2])
            True
        """
        check_bool("enable", enable)
        self.return_prerelu = enable
        for module in self.modules():
            if isinstance(module, _Block):
                module.return_prerelu = enable

    def _stages(self) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            return cast(Tensor, self.bn_initial(F.relu(self.conv1(x))))

        return [stem, self.layer1, self.layer2, self.layer3]

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the unpooled output of ``layer3``, ``[B, 64, H/4, W/4]``.

        Example:
            >>> import torch
            >>> from backbone import resnet32
            >>> resnet32(10).forward_features(torch.zeros(2, 3, 32, 32)).shape
            torch.Size([2, 64, 8, 8])
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
        """Return the output of ``layer3`` and the outputs of the stem and stages ``indices`` selects.

        See :meth:`MammothBackbone.forward_intermediates`; index 0 is the
        stem, 1 to 3 the stages, and there is no norm to apply.

        Example:
            >>> import torch
            >>> from backbone import resnet32
            >>> final, stages = resnet32(10).forward_intermediates(torch.zeros(2, 3, 32, 32), indices=[0, -1])
            >>> final.shape, [s.shape[1] for s in stages]
            (torch.Size([2, 64, 8, 8]), [16, 64])
        """
        check_output_fmt(output_fmt, ("NCHW",))
        check_input(self, x, self.conv1.weight, channels=self.conv1.in_channels)
        result = forward_stages(x, self._stages(), indices, stop_early, False)
        final, taken = cast("tuple[Tensor, list[Tensor]]", result)
        if self.return_prerelu:
            chosen = sorted(set(feature_take_indices(len(self.feature_info), indices)[0]))
            layers = [self.layer1, self.layer2, self.layer3]
            # The stem has no final ReLU to stand before: its output stays.
            taken = [
                t if i == 0 else cast(Tensor, layers[i - 1][-1].prerelu) for i, t in zip(chosen, taken, strict=True)
            ]
        return taken if intermediates_only else (final, taken)


@register_backbone("resnet32", example_kwargs={"num_classes": 10}, example_input_shape=(3, 32, 32))
def resnet32(num_classes: int) -> ResNet32:
    """The CIFAR ResNet-32 of iCaRL (:class:`~backbone.ResNet32`); 464,282 parameters for 10 classes, 470,132 for 100.

    Args:
        num_classes: the number of logits.

    Returns:
        The backbone.

    Example:
        >>> from backbone import resnet32
        >>> sum(p.numel() for p in resnet32(100).parameters())
        470132
    """
    return ResNet32(num_classes)
