"""The argument checks the package shares: one home for each rule and its message.

A leaf module: it imports nothing of the package, so every module can import
it without a cycle. Each check raises ``TypeError`` (wrong type) or
``ValueError`` (wrong value) with a message naming what was expected and
what was given, and returns the value it checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def check_module(value: object, what: str = "") -> nn.Module:
    """Return ``value`` if it is a :class:`torch.nn.Module`, else raise ``TypeError``.

    Example:
        >>> from torch import nn
        >>> from backbone._checks import check_module
        >>> check_module(nn.ReLU())
        ReLU()
        >>> check_module("net")
        Traceback (most recent call last):
        ...
        TypeError: expected a torch.nn.Module, got str
    """
    if not isinstance(value, nn.Module):
        raise TypeError(f"expected a torch.nn.Module{what}, got {type(value).__name__}")
    return value


def check_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int and not a bool, else raise ``TypeError`` naming ``name``.

    Example:
        >>> from backbone._checks import check_int
        >>> check_int(3, "num_seen")
        3
        >>> check_int(True, "num_seen")
        Traceback (most recent call last):
        ...
        TypeError: num_seen must be an int, got bool
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def check_real(value: object, name: str) -> int | float:
    """Return ``value`` as an ``int`` or ``float`` if it is a real number and not a bool, else raise ``TypeError``.

    Any :class:`numbers.Real` is accepted (NumPy scalars included); an integral
    one comes back as an ``int``, any other as a ``float``.

    Example:
        >>> import numpy as np
        >>> from backbone._checks import check_real
        >>> check_real(np.float32(0.5), "decay"), check_real(np.int64(3), "alpha")
        (0.5, 3)
        >>> check_real(True, "decay")
        Traceback (most recent call last):
        ...
        TypeError: decay must be a real number, got bool
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_num_classes(num_classes: object, *, at_least: int = 0) -> int:
    """The check every classifier change makes: an int, at least ``at_least`` (0 means no classifier).

    Example:
        >>> from backbone._checks import check_num_classes
        >>> check_num_classes(5, at_least=3)
        5
        >>> check_num_classes(2, at_least=3)
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be at least the current 3 (growing only), got 2
    """
    num_classes = check_int(num_classes, "num_classes")
    if num_classes < 0:
        raise ValueError(f"num_classes must be 0 (no classifier) or more, got {num_classes}")
    if num_classes < at_least:
        raise ValueError(f"num_classes must be at least the current {at_least} (growing only), got {num_classes}")
    return num_classes


def check_output_fmt(output_fmt: str, supported: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``output_fmt`` is one of ``supported``.

    Example:
        >>> from backbone._checks import check_output_fmt
        >>> check_output_fmt("NHWC", ("NCHW",))
        Traceback (most recent call last):
        ...
        ValueError: output_fmt must be one of 'NCHW', got 'NHWC'
    """
    if output_fmt not in supported:
        raise ValueError(f"output_fmt must be one of {', '.join(map(repr, supported))}, got {output_fmt!r}")


def check_positive_ints(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int (bools are not ints here).

    Example:
        >>> from backbone._checks import check_positive_ints
        >>> check_positive_ints(depth=12, heads=0)
        Traceback (most recent call last):
        ...
        ValueError: heads must be a positive int, got 0
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` naming the argument unless ``value`` is a bool.

    Example:
        >>> from backbone._checks import check_bool
        >>> check_bool("pretrained", 1)
        Traceback (most recent call last):
        ...
        TypeError: pretrained must be a bool, got int
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def allowed_dtypes(weight: Tensor) -> tuple[torch.dtype, ...]:
    """The dtypes an input may have for a layer with this weight: its own, and autocast's when autocast is on.

    Example:
        >>> import torch
        >>> from backbone._checks import allowed_dtypes
        >>> allowed_dtypes(torch.zeros(1))
        (torch.float32,)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     allowed_dtypes(torch.zeros(1))
        (torch.float32, torch.bfloat16)
    """
    device = weight.device.type
    if device != "meta" and torch.is_autocast_enabled(device):
        lower = torch.get_autocast_dtype(device)
        return (weight.dtype,) if lower == weight.dtype else (weight.dtype, lower)
    return (weight.dtype,)


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

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP
        >>> from backbone._checks import check_input
        >>> net = MNISTMLP(4, 2)
        >>> check_input(net, torch.zeros(3, 5), net.fc1.weight, features=4)
        Traceback (most recent call last):
        ...
        ValueError: MNISTMLP expects a batch [B, ...] whose samples flatten to 4 features, got shape (3, 5)
    """
    name = type(owner).__name__
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects the input batch x to be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")
    if x.device != weight.device and weight.device.type != "meta":
        raise ValueError(f"{name} expects inputs on its parameters' device {weight.device}, got {x.device}")
    if x.dtype not in allowed_dtypes(weight):
        names = " or ".join(str(d) for d in allowed_dtypes(weight))
        raise TypeError(f"{name} expects inputs of its parameters' dtype {names}, got {x.dtype}")
    if channels is not None and (x.dim() != 4 or x.shape[1] != channels):
        raise ValueError(f"{name} expects images [B, {channels}, H, W], got shape {tuple(x.shape)}")
    if features is not None and (x.dim() < 2 or math.prod(x.shape[1:]) != features):
        raise ValueError(
            f"{name} expects a batch [B, ...] whose samples flatten to {features} features, got shape {tuple(x.shape)}"
        )


def check_per_block(value: object, depth: int, name: str, *, lone_means_block_0: bool = False) -> dict[int, Any]:
    """``{block index: value}`` from a mapping (None values dropped), None, or (with ``lone_means_block_0``) one
    tensor or function, which is block 0's.

    Example:
        >>> from backbone._checks import check_per_block
        >>> check_per_block({1: "a", 2: None}, 3, "prompts")
        {1: 'a'}
        >>> check_per_block({3: "a"}, 3, "prompts")
        Traceback (most recent call last):
        ...
        ValueError: prompts: block index 3 is out of range for a model of 3 blocks
    """
    if value is None:
        return {}
    if lone_means_block_0 and (isinstance(value, Tensor) or (callable(value) and not isinstance(value, Mapping))):
        return {0: value}
    if not isinstance(value, Mapping):
        expected = (
            "a tensor, a function or a mapping {block index: ...}"
            if lone_means_block_0
            else "a mapping {block index: ...}"
        )
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    out = {}
    for index, item in value.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"{name} must be keyed by block index (int), got {index!r}")
        if not 0 <= index < depth:
            raise ValueError(f"{name}: block index {index} is out of range for a model of {depth} blocks")
        if item is not None:
            out[index] = item
    return out


def check_like(t: object, ref: Tensor, what: str) -> Tensor:
    """Raise unless ``t`` is a dense floating-point tensor in ``ref``'s dtype (or autocast's) and on its device.

    Example:
        >>> import torch
        >>> from backbone._checks import check_like
        >>> check_like(torch.zeros(2, dtype=torch.float64), torch.zeros(1), "prompts")
        Traceback (most recent call last):
        ...
        TypeError: prompts must have the model's dtype torch.float32, got torch.float64
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided or t.is_nested:
        got = "a nested tensor" if t.is_nested else f"layout {t.layout}"
        raise TypeError(f"{what} must be a dense (strided) tensor, got {got}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {t.dtype}")
    allowed = allowed_dtypes(ref)
    if t.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{what} must have the model's dtype {names}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{what} must be on the model's device {ref.device}, got {t.device}")
    return t


def check_batched(
    t: object, batch: int, tail: tuple[int | None, ...], ref: Tensor, what: str, *, empty: bool = False
) -> Tensor:
    """``t`` (checked by :func:`check_like`) as ``[batch, *tail]``, from ``[batch, *tail]``, ``[1, *tail]`` or
    ``tail``; a None in ``tail`` is any size L > 0 (L >= 0 with ``empty``).

    Example:
        >>> import torch
        >>> from backbone._checks import check_batched
        >>> check_batched(torch.zeros(5, 8), 3, (None, 8), torch.zeros(1), "prompts").shape
        torch.Size([3, 5, 8])
    """
    t = check_like(t, ref, what)
    given = tuple(t.shape)
    shape = (1, *given) if len(given) == len(tail) else given
    least = 0 if empty else 1
    fits = len(shape) == len(tail) + 1 and shape[0] in (1, batch)
    fits = fits and all(s >= least if want is None else s == want for s, want in zip(shape[1:], tail, strict=False))
    if not fits:
        dims = ", ".join("L" if want is None else str(want) for want in tail)
        bound = "with L >= 0" if empty else "with L > 0" if None in tail else ""
        raise ValueError(f"{what} must be [{batch}, {dims}] or [{dims}] {bound}, got shape {given}".replace(" ,", ","))
    return t.reshape(shape).expand(batch, *shape[1:])
