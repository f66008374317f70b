"""Shape helpers."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["num_flat_features"]


def num_flat_features(x: Tensor) -> int:
    """Count the elements of one sample: the product of all dimensions but the first.

    Args:
        x: a batch, batch dimension first.

    Returns:
        The number of features per sample; 1 for a 1-D tensor.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``x`` is 0-dimensional and so has no batch dimension.

    Example:
        >>> import torch
        >>> from backbone import num_flat_features
        >>> num_flat_features(torch.zeros(8, 3, 32, 32))
        3072
        >>> num_flat_features(torch.zeros(8))
        1
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    return math.prod(x.shape[1:])
