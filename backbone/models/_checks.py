"""Argument checks shared by the reference backbones."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive_ints(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int (bools are not ints here)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` naming the argument unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_input(
    owner: object, x: object, weight: Tensor, *, channels: int | None = None, features: int | None = None
) -> None:
    """Raise naming the backbone unless ``x`` is a batch it can take: floating point, its dtype, the right shape.

    Args:
        owner: the backbone, for the message.
        x: the input.
        weight: a parameter whose dtype the input must have (outside autocast).
        channels: for image backbones, the channels of ``[B, C, H, W]``.
        features: for flat-input backbones, the features each sample flattens to.
    """
    name = type(owner).__name__
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects the input batch x to be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} expects inputs of its parameters' dtype {weight.dtype}, got {x.dtype}")
    if channels is not None and (x.dim() != 4 or x.shape[1] != channels):
        raise ValueError(f"{name} expects images [B, {channels}, H, W], got shape {tuple(x.shape)}")
    if features is not None and (x.dim() < 2 or math.prod(x.shape[1:]) != features):
        raise ValueError(
            f"{name} expects a batch [B, ...] whose samples flatten to {features} features, got shape {tuple(x.shape)}"
        )
