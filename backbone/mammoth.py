"""Helpers for Mammoth users: building from an argparse Namespace, and Mammoth's own registry.

Mammoth builds its backbone with ``get_backbone(args)``, from the
``--backbone`` name and the other command-line arguments, and keeps its own
registry filled by its own ``register_backbone``. These helpers let the
reference backbones of this package take part in both. They live here, apart
from the package's own API, whose :func:`backbone.get_backbone` takes a name
and keyword arguments.

Inside a Mammoth checkout, ``import backbone`` finds Mammoth's own folder;
import this package as :mod:`backbone_reference` there (see :doc:`migrating`).
"""

from __future__ import annotations

import inspect
from argparse import Namespace
from collections.abc import Callable, Iterable
from typing import Any

from .base import MammothBackbone
from .registry import list_backbones, registered

__all__ = ["get_backbone", "register_into"]


def get_backbone(args: Namespace) -> MammothBackbone:
    """Build the backbone ``args.backbone`` names, as Mammoth's ``get_backbone(args)`` does.

    Each argument of the registered class or factory is read from the
    attribute of ``args`` with the same name; attributes it does not take are
    ignored, and an argument with a default may be absent.

    Args:
        args: a Namespace with ``backbone`` (a registered name) and the
            builder's arguments, such as ``num_classes``.

    Returns:
        The new backbone.

    Raises:
        TypeError: ``args`` is not a Namespace.
        ValueError: ``args`` has no ``backbone``, the name is not registered,
            or a required argument is missing from ``args``.

    Example:
        >>> from argparse import Namespace
        >>> from backbone.mammoth import get_backbone
        >>> args = Namespace(backbone="resnet18", num_classes=10, lr=0.1, batch_size=32)
        >>> get_backbone(args).num_classes
        10
        >>> get_backbone(Namespace(backbone="resnet18"))
        Traceback (most recent call last):
        ...
        ValueError: args has no 'num_classes', which resnet18 needs (it takes num_classes, num_filters)
    """
    if not isinstance(args, Namespace):
        raise TypeError(f"args must be an argparse.Namespace, got {type(args).__name__}")
    name = getattr(args, "backbone", None)
    if not isinstance(name, str):
        raise ValueError(f"args must name the backbone in args.backbone, got {name!r}")
    entry = registered(name)
    parameters = inspect.signature(entry.builder).parameters
    kwargs: dict[str, Any] = {}
    for parameter in parameters.values():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if hasattr(args, parameter.name):
            kwargs[parameter.name] = getattr(args, parameter.name)
        elif parameter.default is inspect.Parameter.empty:
            takes = ", ".join(parameters)
            raise ValueError(f"args has no {parameter.name!r}, which {entry.name} needs (it takes {takes})")
    net = entry.builder(**kwargs)
    return net


def register_into(
    register_backbone: Callable[[str], Callable[[Callable[..., MammothBackbone]], object]],
    names: Iterable[str] | None = None,
    *,
    prefix: str = "",
) -> list[str]:
    """Register this package's backbones in another registry, such as Mammoth's.

    ``register_backbone`` is that registry's decorator factory (Mammoth's
    ``backbone.register_backbone``): it is called with each name, and the
    result with the class or factory. Mammoth reads the builder's signature
    to know which command-line arguments it takes.

    Args:
        register_backbone: the other registry's ``register_backbone``.
        names: the names to register (one name may be given as a str);
            every registered one when None.
        prefix: put before each name, where the other registry already has
            it (Mammoth has its own ``resnet18``).

    Returns:
        The names given to the other registry.

    Raises:
        TypeError: ``register_backbone`` is not callable.
        ValueError: a name is not registered here.

    Example:
        >>> from backbone.mammoth import register_into
        >>> theirs = {}
        >>> def register_backbone(name):
        ...     def decorator(builder):
        ...         theirs[name] = builder
        ...         return builder
        ...     return decorator
        >>> register_into(register_backbone, ["resnet18", "mnistmlp"], prefix="ref-")
        ['ref-resnet18', 'ref-mnistmlp']
        >>> theirs["ref-resnet18"](num_classes=10).num_classes
        10
    """
    if not callable(register_backbone):
        raise TypeError(f"register_backbone must be callable, got {type(register_backbone).__name__}")
    if isinstance(names, str):
        names = [names]  # one name, not its letters
    entries = [registered(name) for name in (list_backbones() if names is None else names)]
    given = []
    for entry in entries:
        register_backbone(prefix + entry.name)(entry.builder)
        given.append(prefix + entry.name)
    return given
