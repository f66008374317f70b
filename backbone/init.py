"""Weight initialisation."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["xavier"]


def xavier(m: nn.Module) -> None:
    """Apply Glorot-uniform initialisation to a linear layer, in place.

    Weights of every :class:`torch.nn.Linear` (subclasses included) are drawn
    from :func:`torch.nn.init.xavier_uniform_`, biases are set to zero, and any
    other module is left untouched. It is meant for ``net.apply(xavier)``.

    Args:
        m: the module to initialise.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import xavier
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU())
        >>> _ = net.apply(xavier)
        >>> torch.equal(net[0].bias, torch.zeros(10))
        True
        >>> bool(net[0].weight.abs().max() <= (6 / 20) ** 0.5)
        True
    """
    if isinstance(m, nn.Linear):
        with torch.no_grad():
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
