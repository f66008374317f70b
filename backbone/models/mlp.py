"""A multi-layer perceptron for flattened inputs such as MNIST."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from torch import Tensor, nn

from backbone.base import MammothBackbone, _check_output_fmt, _forward_stages, feature_take_indices
from backbone.init import xavier
from backbone.models._checks import check_positive_ints
from backbone.registry import register_backbone

__all__ = ["MNISTMLP"]


@register_backbone("mnistmlp", example_kwargs={"input_size": 784, "output_size": 10}, example_input_shape=(1, 28, 28))
class MNISTMLP(MammothBackbone):
    """Two hidden ReLU layers and a linear classifier, initialised with :func:`~backbone.xavier`.

    Inputs of any shape are flattened per sample, so ``[B, 1, 28, 28]`` and
    ``[B, 784]`` both work for ``input_size=784``. The two hidden layers are
    the stages: ``returnt='full'`` gives ``(logits, [hidden1, hidden2])``, and
    :meth:`forward_features` gives ``hidden2``, which needs no pooling.

    Args:
        input_size: the number of input features per sample.
        output_size: the number of classes.
        hidden_size: the width of both hidden layers.

    Raises:
        ValueError: a size is not a positive integer.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP
        >>> net = MNISTMLP(784, 10)
        >>> sum(p.numel() for p in net.parameters())
        89610
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.feature_dim
        100
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 100) -> None:
        check_positive_ints(input_size=input_size, output_size=output_size, hidden_size=hidden_size)
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.feature_dim = hidden_size
        self.return_prerelu = False
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(hidden_size, output_size)
        self.feature_info = [
            {"num_chs": hidden_size, "reduction": 1, "module": "act1"},
            {"num_chs": hidden_size, "reduction": 1, "module": "act2"},
        ]
        self.apply(xavier)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the second hidden layer, ``[B, hidden_size]``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(4, 2, hidden_size=3).forward_features(torch.ones(5, 4)).shape
            torch.Size([5, 3])
        """
        return self.act2(self.fc2(self.act1(self.fc1(x.flatten(1)))))  # type: ignore[no-any-return]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Return the second hidden layer and the hidden layers ``indices`` selects.

        See :meth:`MammothBackbone.forward_intermediates`; there is no norm
        to apply, and the stages are ``[B, hidden_size]``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> final, stages = MNISTMLP(4, 2, hidden_size=3).forward_intermediates(torch.ones(5, 4))
            >>> final.shape, len(stages)
            (torch.Size([5, 3]), 2)
        """
        _check_output_fmt(output_fmt, ("NCHW",))
        pre: list[Tensor] = []

        def stage(linear: nn.Linear, act: nn.Module) -> Callable[[Tensor], Tensor]:
            def run(h: Tensor) -> Tensor:
                h = linear(h.flatten(1))
                pre.append(h)
                return cast(Tensor, act(h))

            return run

        stages = [stage(self.fc1, self.act1), stage(self.fc2, self.act2)]
        result = _forward_stages(x, stages, indices, stop_early, intermediates_only)
        if not self.return_prerelu:
            return result
        chosen = [pre[i] for i in sorted(set(feature_take_indices(2, indices)[0]))]
        return chosen if intermediates_only else (cast("tuple[Tensor, list[Tensor]]", result)[0], chosen)

    def set_return_prerelu(self, enable: bool = True) -> None:
        """Make ``'full'`` give each hidden layer before its ReLU: ``fc1(x)`` and ``fc2(hidden1)``.

        The logits and features do not change.

        Args:
            enable: turn the pre-activation outputs on or off.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.set_return_prerelu(True)
            >>> x = torch.randn(5, 4)
            >>> _, (pre1, pre2) = net(x, returnt="full")
            >>> torch.equal(pre1, net.fc1(x))
            True
        """
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
        self.return_prerelu = enable

    def init_classifier(self, classifier: nn.Linear) -> None:
        """Glorot-uniform weights and zero bias, as at construction (see :func:`~backbone.xavier`).

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.reset_classifier(7)
            >>> torch.equal(net.classifier.bias, torch.zeros(7))
            True
        """
        xavier(classifier)
