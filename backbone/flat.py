"""Flat vectors of a module's parameters and gradients.

Every function here walks ``module.parameters()`` in its usual order (each
tied parameter once, frozen ones included) and treats the parameters as one
1-D vector, each parameter flattened in row-major order. They work on any
:class:`torch.nn.Module`; :class:`~backbone.MammothBackbone` exposes them as
methods.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors

__all__ = ["get_grads", "get_grads_list", "get_params", "set_grads", "set_params"]


def _parameters(module: nn.Module) -> list[nn.Parameter]:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    return list(module.parameters())


def _check_vector(vector: object, params: list[nn.Parameter], name: str) -> Tensor:
    """Raise unless ``vector`` is a 1-D tensor with one element per parameter element."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(vector.shape)}")
    expected = sum(p.numel() for p in params)
    if vector.numel() != expected:
        raise ValueError(f"{name} must have {expected} elements (one per parameter element), got {vector.numel()}")
    return vector


def _check_source(vector: object, params: list[nn.Parameter], name: str) -> Tensor:
    """The setters' check: a vector of the right length whose dtype casts to every parameter's."""
    vector = _check_vector(vector, params, name)
    # copy_ would fail half-way through (complex into real, say), after some
    # parameters were already written: refuse before touching anything.
    for dtype in {p.dtype for p in params}:
        if not torch.can_cast(vector.dtype, dtype):
            raise TypeError(f"{name} has dtype {vector.dtype}, which cannot be cast to the parameters' {dtype}")
    return vector


def _pieces(vector: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Views of ``vector`` shaped like each parameter in turn.

    torch's own helper builds them in one C++ call; building each view from
    Python costs a few microseconds a parameter, which dominates models of
    many small tensors.
    """
    return list(_unflatten_dense_tensors(vector, params)) if params else []  # type: ignore[no-untyped-call]


def _copy_all(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """``d.copy_(s)`` for every pair, in as few kernel launches as torch allows.

    On CUDA, ``_foreach_copy_`` copies up to about a hundred tensors per
    launch instead of one; where it cannot (mixed dtypes or devices, the CPU)
    torch falls back to one ``copy_`` per pair.
    """
    if destinations:
        torch._foreach_copy_(destinations, sources)


def _write(sources: list[Tensor | None], out: Tensor, params: list[nn.Parameter]) -> Tensor:
    """Copy each source into its slice of ``out``; a missing source writes zeros."""
    pieces = _pieces(out, params)
    with torch.no_grad():
        _copy_all(
            [piece for piece, src in zip(pieces, sources, strict=True) if src is not None],
            [src for src in sources if src is not None],
        )
        missing = [piece for piece, src in zip(pieces, sources, strict=True) if src is None]
        if missing:
            torch._foreach_zero_(missing)
    return out


def _read(vector: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Pieces of ``vector`` shaped like each parameter, converted once where they agree."""
    devices = {p.device for p in params}
    dtypes = {p.dtype for p in params}
    if len(devices) == 1:
        # One transfer (and conversion) for the whole vector rather than one
        # per parameter; same-dtype pieces also keep the multi-tensor fast path.
        vector = vector.to(device=devices.pop(), dtype=dtypes.pop() if len(dtypes) == 1 else None)
    return _pieces(vector, params)


def _flat_copy(tensor: Tensor) -> Tensor:
    # reshape already copies a non-contiguous tensor; copying again would be waste.
    return tensor.view(-1).clone() if tensor.is_contiguous() else tensor.reshape(-1)


def _grads(params: list[nn.Parameter], out: Tensor | None) -> Tensor:
    if out is None:
        if not params:
            return torch.empty(0)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        out = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
    else:
        _check_vector(out, params, "out")
    return _write([p.grad for p in params], out, params)


def get_params(module: nn.Module, *, out: Tensor | None = None) -> Tensor:
    """Concatenate all parameters of ``module`` into one 1-D tensor.

    Without ``out`` the result is differentiable: a loss computed from it
    sends gradients back to the parameters (as an EWC penalty needs).

    Args:
        module: the module whose parameters are read.
        out: a 1-D tensor with one element per parameter element to write
            into instead of allocating; no autograd graph is recorded.

    Returns:
        The flat parameter vector (``out`` itself when given).

    Raises:
        TypeError: ``module`` is not a module or ``out`` is not a tensor.
        ValueError: ``out`` is not 1-D or has the wrong number of elements.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import get_params
        >>> layer = nn.Linear(3, 2)
        >>> get_params(layer).shape
        torch.Size([8])
        >>> get_params(layer).requires_grad
        True
        >>> buffer = torch.empty(8)
        >>> get_params(layer, out=buffer) is buffer
        True
    """
    params = _parameters(module)
    if out is not None:
        return _write(list(params), _check_vector(out, params, "out"), params)
    if not params:
        return torch.empty(0)
    return torch.cat([p.reshape(-1) for p in params])


def set_params(module: nn.Module, new_params: Tensor) -> None:
    """Copy a flat vector into the parameters of ``module``, in place.

    The parameter objects stay the same (optimizers and hooks keep working) and
    nothing aliases ``new_params``: each piece is copied, converted to the
    parameter's dtype and device. The vector is checked before anything is
    written.

    Args:
        module: the module whose parameters are overwritten.
        new_params: a 1-D tensor with one element per parameter element, in
            the order of :func:`get_params`.

    Raises:
        TypeError: ``new_params`` is not a tensor, or its dtype cannot be cast
            to a parameter's dtype.
        ValueError: ``new_params`` is not 1-D or has the wrong number of elements.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import get_params, set_params
        >>> layer = nn.Linear(3, 2)
        >>> set_params(layer, torch.arange(8.0))
        >>> layer.bias
        Parameter containing:
        tensor([6., 7.], requires_grad=True)
    """
    params = _parameters(module)
    _check_source(new_params, params, "new_params")
    with torch.no_grad():
        _copy_all(list(params), _read(new_params, params))


def get_grads(module: nn.Module, *, out: Tensor | None = None) -> Tensor:
    """Concatenate all gradients of ``module`` into one 1-D tensor.

    The layout is that of :func:`get_params`. A parameter whose ``.grad`` is
    ``None`` (frozen, unused in the last backward, or before any backward)
    contributes zeros. The result is detached from any graph.

    Args:
        module: the module whose gradients are read.
        out: a 1-D tensor with one element per parameter element to write
            into instead of allocating.

    Returns:
        The flat gradient vector (``out`` itself when given).

    Raises:
        TypeError: ``module`` is not a module or ``out`` is not a tensor.
        ValueError: ``out`` is not 1-D or has the wrong number of elements.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import get_grads
        >>> layer = nn.Linear(3, 2)
        >>> get_grads(layer)
        tensor([0., 0., 0., 0., 0., 0., 0., 0.])
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> get_grads(layer)
        tensor([1., 1., 1., 1., 1., 1., 1., 1.])
    """
    return _grads(_parameters(module), out)


def set_grads(module: nn.Module, new_grads: Tensor) -> None:
    """Copy a flat vector into the gradients of ``module``.

    Each ``.grad`` is overwritten in place, or created (in the parameter's
    dtype, device and layout) where it is ``None``. Nothing aliases
    ``new_grads``: a later backward accumulates into ``.grad`` and leaves the
    caller's tensor alone. The vector is checked before anything is written.

    Args:
        module: the module whose gradients are overwritten.
        new_grads: a 1-D tensor with one element per parameter element, in
            the order of :func:`get_params`.

    Raises:
        TypeError: ``new_grads`` is not a tensor, or its dtype cannot be cast
            to a parameter's dtype.
        ValueError: ``new_grads`` is not 1-D or has the wrong number of elements.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import set_grads
        >>> layer = nn.Linear(3, 2)
        >>> set_grads(layer, torch.arange(8.0))
        >>> layer.bias.grad
        tensor([6., 7.])
    """
    params = _parameters(module)
    _check_source(new_grads, params, "new_grads")
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.empty_like(p)
        _copy_all([p.grad for p in params if p.grad is not None], _read(new_grads, params))


def get_grads_list(module: nn.Module) -> list[Tensor]:
    """Return one flat gradient per parameter, in the order of :func:`get_params`.

    Each entry is a 1-D copy in its parameter's dtype (zeros where ``.grad``
    is ``None``), so ``torch.cat(get_grads_list(m))`` equals ``get_grads(m)``.
    On a GPU, when all parameters share a dtype and device, the entries are
    views of one freshly allocated vector; no entry shares memory with a
    ``.grad``.

    Args:
        module: the module whose gradients are read.

    Returns:
        A list with one 1-D tensor per parameter.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import get_grads, get_grads_list
        >>> layer = nn.Linear(3, 2)
        >>> [g.shape for g in get_grads_list(layer)]
        [torch.Size([6]), torch.Size([2])]
        >>> torch.equal(torch.cat(get_grads_list(layer)), get_grads(layer))
        True
    """
    params = _parameters(module)
    if params and params[0].device.type != "cpu" and len({(p.dtype, p.device) for p in params}) == 1:
        # On an accelerator one allocation and one multi-tensor copy beat a
        # launch per parameter. On the CPU, per-parameter copies are faster:
        # small allocations reuse freed memory, one large one faults in fresh
        # pages. Either way nothing shares memory with a .grad.
        return list(torch.split(_grads(params, None), [p.numel() for p in params]))
    with torch.no_grad():
        return [_flat_copy(p.grad) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
