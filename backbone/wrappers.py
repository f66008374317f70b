"""Reaching the backbone inside the wrappers that scaling out puts around it."""

from __future__ import annotations

from typing import cast

from torch import nn

from ._checks import check_module

__all__ = ["unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """Return the module inside ``DistributedDataParallel``, ``DataParallel``, FSDP and ``torch.compile`` wrappers.

    A method that keeps its backbone as ``self.net`` cannot count on
    ``self.net.get_grads()`` once the backbone is wrapped: the wrapper has
    none of the backbone's methods, and a compiled module is not even an
    instance of the backbone's class. ``unwrap(self.net)`` peels every layer
    of wrapping (a compiled DDP model, say) and returns the backbone itself,
    which shares its parameters with the wrapper. Calling the wrapper, with
    any ``returnt``, still goes through the wrapper (and so through DDP's
    gradient synchronisation, or the compiled graph).

    Args:
        module: the backbone, wrapped or not.

    Returns:
        The innermost module; ``module`` itself when it is not wrapped.

    Raises:
        TypeError: ``module`` is not a module.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, unwrap
        >>> net = MNISTMLP(4, 2)
        >>> wrapped = torch.nn.DataParallel(net)
        >>> unwrap(wrapped) is net, unwrap(net) is net
        (True, True)
        >>> unwrap(wrapped).get_params().shape
        torch.Size([10802])
    """
    module = check_module(module)
    while True:
        inner = _inner(module)
        if inner is None:
            return module
        module = inner


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped, when ``module`` is a compiled module; None otherwise.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP
        >>> from backbone.wrappers import compiled_original
        >>> net = MNISTMLP(4, 2)
        >>> compiled_original(torch.compile(net)) is net, compiled_original(net)
        (True, None)
    """
    return cast(nn.Module, module._orig_mod) if type(module).__name__ == "OptimizedModule" else None


def _inner(module: nn.Module) -> nn.Module | None:
    # torch.compile's OptimizedModule keeps the original as _orig_mod;
    # DataParallel, DistributedDataParallel and FSDP's wrapper class keep it
    # as .module. Other modules with a submodule named "module" are not
    # wrappers, so the class and its bases are checked by name
    # (torch.distributed may be unavailable, and importing FSDP is slow).
    original = compiled_original(module)
    if original is not None:
        return original
    if any(kind.__name__ in _WRAPPERS for kind in type(module).__mro__):
        return cast(nn.Module, module.module)
    return None


# By class name, anywhere in the class's bases, so that subclasses are seen too.
_WRAPPERS = ("DataParallel", "DistributedDataParallel", "FullyShardedDataParallel")
