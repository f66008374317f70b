"""A multi-layer perceptron for flattened inputs such as MNIST."""

from __future__ import annotations

from torch import Tensor, nn

from backbone.base import MammothBackbone
from backbone.init import xavier
from backbone.models._checks import check_positive_ints
from backbone.registry import register_backbone

__all__ = ["MNISTMLP"]


@register_backbone("mnistmlp", example_kwargs={"input_size": 784, "output_size": 10}, example_input_shape=(1, 28, 28))
class MNISTMLP(MammothBackbone):
    """Two hidden ReLU layers and a linear classifier, initialised with :func:`~backbone.xavier`.

    Inputs of any shape are flattened per sample, so ``[B, 1, 28, 28]`` and
    ``[B, 784]`` both work for ``input_size=784``. ``returnt='full'`` gives
    ``(logits, [hidden1, hidden2])``.

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
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, output_size)
        self.apply(xavier)

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the second hidden layer as features, and both hidden layers as stages.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> features, stages = MNISTMLP(4, 2, hidden_size=3).forward_intermediates(torch.ones(5, 4))
            >>> features.shape, len(stages)
            (torch.Size([5, 3]), 2)
        """
        hidden1 = self.fc1(x.flatten(1)).relu()
        hidden2 = self.fc2(hidden1).relu()
        return hidden2, [hidden1, hidden2]
