"""The backbone API that continual-learning methods are written against.

Example:
    >>> import torch
    >>> import backbone
    >>> net = backbone.MNISTMLP(784, 10)
    >>> logits, features = net(torch.zeros(3, 784), returnt="both")
    >>> logits.shape, features.shape
    (torch.Size([3, 10]), torch.Size([3, 100]))
"""

from backbone.base import RETURN_TYPES, BackboneOutput, MammothBackbone, ReturnType, check_returnt
from backbone.flat import get_grads, get_grads_list, get_params, set_grads, set_params
from backbone.init import xavier
from backbone.models import MNISTMLP
from backbone.shapes import num_flat_features

__version__ = "0.1.0"

__all__ = [
    "MNISTMLP",
    "RETURN_TYPES",
    "BackboneOutput",
    "MammothBackbone",
    "ReturnType",
    "check_returnt",
    "get_grads",
    "get_grads_list",
    "get_params",
    "num_flat_features",
    "set_grads",
    "set_params",
    "xavier",
]
