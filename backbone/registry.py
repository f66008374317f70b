"""Backbones by name.

Names are case-insensitive and ``_`` equals ``-``: ``"Reduced_ResNet18"``
and ``"reduced-resnet18"`` are the same name.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .base import MammothBackbone

__all__ = [
    "RegisteredBackbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "registered",
    "unregister_backbone",
]

Builder = TypeVar("Builder", bound=Callable[..., MammothBackbone])


@dataclass(frozen=True)
class RegisteredBackbone:
    """A registry entry: how to build a backbone, and an example to show it with.

    Attributes:
        name: the normalised name.
        builder: the class or factory.
        example_kwargs: keyword arguments that build a typical instance.
        example_input_shape: the shape of one input sample for that instance.

    Example:
        >>> from backbone import registered
        >>> entry = registered("resnet18")
        >>> entry.name, entry.example_input_shape
        ('resnet18', (3, 32, 32))
    """

    name: str
    builder: Callable[..., MammothBackbone]
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    example_input_shape: tuple[int, ...] | None = None


_REGISTRY: dict[str, RegisteredBackbone] = {}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _normalise(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a backbone name must be a str, got {type(name).__name__}")
    return name.strip().lower().replace("_", "-")


def _check_name(name: object) -> str:
    """A name to register: letters, digits, '-', '_' and '.', starting with a letter or digit."""
    if not isinstance(name, str):
        raise TypeError(f"a backbone name must be a str, got {type(name).__name__}")
    # Surrounding spaces are dropped, as the lookups drop them.
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(
            "a backbone name must be letters, digits, '-', '_' or '.', starting with a letter or digit, "
            f"such as 'resnet18'; got {name!r}"
        )
    return _normalise(name)


def _check_example_kwargs(example_kwargs: object) -> dict[str, Any]:
    if example_kwargs is None:
        return {}
    if not isinstance(example_kwargs, Mapping):
        raise TypeError(f"example_kwargs must be a dict of keyword arguments, got {type(example_kwargs).__name__}")
    bad = [key for key in example_kwargs if not isinstance(key, str)]
    if bad:
        raise TypeError(f"example_kwargs must have str keys (argument names), got {bad[0]!r}")
    return dict(example_kwargs)


def _check_shape(shape: object) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise TypeError(
            f"example_input_shape must be a tuple of positive ints such as (3, 32, 32), got {type(shape).__name__} "
            f"{shape!r}"
        )
    if any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise TypeError(f"example_input_shape must be a tuple of positive ints such as (3, 32, 32), got {shape!r}")
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            f"example_input_shape must be a non-empty tuple of positive ints such as (3, 32, 32), got {shape!r}"
        )
    return tuple(shape)


def register_backbone(
    name: str,
    *,
    example_kwargs: dict[str, Any] | None = None,
    example_input_shape: tuple[int, ...] | None = None,
    override: bool = False,
) -> Callable[[Builder], Builder]:
    """Register a :class:`~backbone.MammothBackbone` subclass or a factory under ``name``.

    Use it as a decorator; the decorated object is returned unchanged.
    Registering a name that is taken is an error that says how to replace the
    entry: ``override=True`` replaces it (a copy of Mammoth's ResNet file, which
    registers ``resnet18`` again, needs that), or
    :func:`~backbone.unregister_backbone` frees the name first.

    Args:
        name: the name to register (case-insensitive, ``_`` equals ``-``).
        example_kwargs: keyword arguments for a typical instance, used by
            ``python -m backbone list``.
        example_input_shape: the shape of one sample for that instance.
        override: replace an entry of the same name instead of refusing.

    Returns:
        The decorator.

    Raises:
        ValueError: the name is already registered (and ``override`` is
            False), or is not made of letters, digits, ``-``, ``_`` and ``.``
            (starting with a letter or digit), or ``example_input_shape`` has
            a size that is not positive.
        TypeError: ``override`` is not a bool, the name is not a str, ``example_kwargs`` is not a dict
            with str keys, ``example_input_shape`` is not a tuple or list of
            ints, or the decorated object is a class that does not derive from
            ``MammothBackbone`` or is not callable.

    Example:
        >>> from torch import nn
        >>> from backbone import MNISTMLP, get_backbone, register_backbone, unregister_backbone
        >>> @register_backbone("tiny-mlp")
        ... def tiny_mlp(num_classes=2):
        ...     return MNISTMLP(4, num_classes, hidden_size=3)
        >>> get_backbone("Tiny_MLP", num_classes=5).classifier.out_features
        5
        >>> register_backbone("tiny-mlp")(tiny_mlp)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: a backbone named 'tiny-mlp' is already registered; pass override=True to replace it, ...
        >>> _ = register_backbone("tiny-mlp", override=True)(tiny_mlp)
        >>> unregister_backbone("tiny-mlp")
        >>> register_backbone("tiny mlp")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: a backbone name must be letters, digits, '-', '_' or '.', ...; got 'tiny mlp'
    """
    key = _check_name(name)
    kwargs = _check_example_kwargs(example_kwargs)
    shape = _check_shape(example_input_shape)
    if not isinstance(override, bool):
        raise TypeError(f"override must be a bool, got {type(override).__name__}")
    if key in _REGISTRY and not override:
        raise ValueError(_taken(key))

    def decorator(builder: Builder) -> Builder:
        if inspect.isclass(builder) and not issubclass(builder, MammothBackbone):
            raise TypeError(f"register_backbone expects a MammothBackbone subclass or a factory, got {builder!r}")
        if not callable(builder):
            raise TypeError(f"register_backbone expects a MammothBackbone subclass or a factory, got {builder!r}")
        if key in _REGISTRY and not override:
            raise ValueError(_taken(key))
        _REGISTRY[key] = RegisteredBackbone(key, builder, dict(kwargs), shape)
        return builder

    return decorator


def _taken(key: str) -> str:
    return (
        f"a backbone named {key!r} is already registered; pass override=True to replace it, "
        "or unregister_backbone() it first"
    )


def registered(name: str) -> RegisteredBackbone:
    """Return the registry entry for ``name``.

    Args:
        name: a registered name (case-insensitive, ``_`` equals ``-``).

    Returns:
        The entry.

    Raises:
        ValueError: no backbone has that name; the message lists the known
            names and the closest match.

    Example:
        >>> from backbone import registered
        >>> registered("MNISTMLP").example_kwargs
        {'input_size': 784, 'output_size': 10}
    """
    key = _normalise(name)
    if key not in _REGISTRY:
        known = list_backbones()
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(known)}{hint}")
    return _REGISTRY[key]


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry, so that it can be registered again.

    Args:
        name: a registered name (case-insensitive, ``_`` equals ``-``).

    Raises:
        ValueError: no backbone has that name.

    Example:
        >>> from backbone import MNISTMLP, list_backbones, register_backbone, unregister_backbone
        >>> _ = register_backbone("scratch")(MNISTMLP)
        >>> unregister_backbone("SCRATCH")
        >>> "scratch" in list_backbones()
        False
    """
    del _REGISTRY[registered(name).name]


def _describe(parameter: inspect.Parameter) -> str:
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{parameter.name}"
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        return f"*{parameter.name}"
    if parameter.default is inspect.Parameter.empty:
        return parameter.name
    return f"{parameter.name}={parameter.default!r}"


def list_backbones() -> list[str]:
    """Return the registered names, sorted.

    Returns:
        The names.

    Example:
        >>> from backbone import list_backbones
        >>> [name for name in list_backbones() if "resnet" in name]
        ['reduced-resnet18', 'resnet18', 'resnet32', 'resnet34', 'resnet50']
    """
    return sorted(_REGISTRY)


def get_backbone(name: str, **kwargs: Any) -> MammothBackbone:
    """Build the backbone registered under ``name``.

    Args:
        name: a registered name (case-insensitive, ``_`` equals ``-``).
        **kwargs: passed to the class or factory.

    Returns:
        The new backbone.

    Raises:
        ValueError: no backbone has that name; the message lists the known
            names and the closest match.
        TypeError: the keyword arguments do not fit the class or factory; the
            message names the ones it accepts.

    Example:
        >>> from backbone import get_backbone
        >>> net = get_backbone("resnet18", num_classes=100)
        >>> net.classifier.out_features
        100
        >>> get_backbone("resnet81", num_classes=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown backbone 'resnet81'; known backbones: mnistmlp, ...; did you mean 'resnet18'?
        >>> get_backbone("resnet18", classes=10)
        Traceback (most recent call last):
        ...
        TypeError: resnet18 accepts num_classes, num_filters=64; got unexpected keyword arguments ['classes']
        >>> get_backbone("resnet18")
        Traceback (most recent call last):
        ...
        TypeError: resnet18 accepts num_classes, num_filters=64; missing a required argument: 'num_classes'
    """
    entry = registered(name)
    parameters = inspect.signature(entry.builder).parameters
    accepted = ", ".join(_describe(p) for p in parameters.values())
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unexpected = [] if takes_any else [k for k in kwargs if k not in parameters]
    if unexpected:
        raise TypeError(f"{entry.name} accepts {accepted}; got unexpected keyword arguments {unexpected}")
    try:
        inspect.signature(entry.builder).bind(**kwargs)
    except TypeError as error:
        raise TypeError(f"{entry.name} accepts {accepted}; {error}") from None
    net = entry.builder(**kwargs)
    if not isinstance(net, MammothBackbone):
        raise TypeError(
            f"the factory registered as {entry.name!r} returned {type(net).__name__}, not a MammothBackbone"
        )
    return net
