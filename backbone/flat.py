"""Flat vectors of a module's parameters and gradients.

Every function here walks ``module.parameters()`` in its usual order (each
tied parameter once, frozen ones included) and treats the parameters as one
1-D vector, each parameter flattened in row-major order. They work on any
:class:`torch.nn.Module`; :class:`~backbone.MammothBackbone` exposes them as
methods.

Every call either does all it promises or raises before anything is written:
the vector, every destination and every memory overlap are checked first,
and values are staged before the first write, so a rejected call leaves
parameters and gradients (values and objects) exactly as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors

__all__ = ["add_grads", "get_grads", "get_grads_list", "get_params", "set_grads", "set_params"]


def _parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module``, refusing any that is not a dense tensor."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    params = list(module.parameters())
    for i, p in enumerate(params):
        if _sharded(p):
            raise TypeError(
                f"parameter {_name(module, i)!r} is sharded by FSDP ({type(p).__name__}), so each rank holds only part "
                "of it; flat vectors of a sharded model are not supported: use DistributedDataParallel, or gather the "
                "full parameters first"
            )
        if p.layout != torch.strided:
            raise TypeError(
                f"parameter {_name(module, i)!r} must be a dense (strided) tensor, got layout {p.layout}; "
                "flat vectors cover dense parameters only"
            )
    return params


def _sharded(p: Tensor) -> bool:
    # FSDP's fully_shard makes parameters DTensors; the older
    # FullyShardedDataParallel flattens them into FlatParameters.
    return type(p).__name__ == "DTensor" or bool(getattr(p, "_is_flat_param", False))


def _name(module: nn.Module, index: int) -> str:
    """The qualified name of the ``index``-th parameter, for error messages only."""
    for i, (name, _) in enumerate(module.named_parameters()):
        if i == index:
            return name
    return f"#{index}"


def _result_dtype(params: list[nn.Parameter]) -> torch.dtype:
    if not params:
        return torch.get_default_dtype()
    return functools.reduce(torch.promote_types, (p.dtype for p in params))


def _span(t: Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` that ``t`` can read or write."""
    start = t.data_ptr()
    if t.numel() == 0:
        return start, start
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + extent * t.element_size()


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` may touch the same memory (by byte ranges, so conservative for interleaved views)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0 or a.device.type == "meta":
        return False
    a0, a1 = _span(a)
    b0, b1 = _span(b)
    return a0 < b1 and b0 < a1


def _first_overlap(vector: Tensor, tensors: list[Tensor | None]) -> int | None:
    """The index of the first tensor that shares memory with ``vector``, if any.

    Tensors in other storages cannot overlap ``vector``; a data pointer
    comparison against its storage rules most of them out cheaply.
    """
    if vector.numel() == 0 or vector.device.type == "meta":
        return None
    storage = vector.untyped_storage()
    low, high = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    device = vector.device
    for i, t in enumerate(tensors):
        if t is None or t.layout != torch.strided or t.device != device:
            continue
        if low <= t.data_ptr() < high and _overlap(vector, t):
            return i
    return None


def _unwritable(t: Tensor) -> tuple[type[Exception], str] | None:
    """Why ``t`` cannot be written in place, element by element, here and now; None when it can."""
    if t.layout != torch.strided:
        return TypeError, f"must be a dense (strided) tensor, got layout {t.layout}"
    if t.is_inference() and not torch.is_inference_mode_enabled():
        return ValueError, (
            "is an inference tensor (made under torch.inference_mode()) and cannot be written outside "
            "inference mode; expected a normal tensor (replace it with a clone made outside inference mode)"
        )
    if not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1:
        return ValueError, (
            "cannot be written element by element: several of its elements share one memory location "
            f"(strides {t.stride()}, as from expand()); expected a tensor that owns each element, such as a clone"
        )
    return None


def _check_writable(tensors: list[Tensor | None], what: Callable[[int], str]) -> None:
    """Raise, naming the tensor with ``what(index)``, unless every tensor can be written in place."""
    for i, t in enumerate(tensors):
        problem = None if t is None else _unwritable(t)
        if problem is not None:
            error, reason = problem
            raise error(f"{what(i)} {reason}")


def _check_vector(vector: object, params: list[nn.Parameter], name: str) -> Tensor:
    """Raise unless ``vector`` is a dense 1-D tensor with data and one element per parameter element."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {vector.layout}")
    if vector.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    if vector.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(vector.shape)}")
    expected = sum(p.numel() for p in params)
    if vector.numel() != expected:
        raise ValueError(f"{name} must have {expected} elements (one per parameter element), got {vector.numel()}")
    return vector


def _check_source(vector: object, params: list[nn.Parameter], name: str) -> Tensor:
    """The setters' check: a vector of the right length whose dtype casts to every parameter's."""
    vector = _check_vector(vector, params, name)
    for dtype in {p.dtype for p in params}:
        if not torch.can_cast(vector.dtype, dtype):
            raise TypeError(f"{name} has dtype {vector.dtype}, which cannot be cast to the parameters' {dtype}")
    return vector


def _check_out(out: object, module: nn.Module, params: list[nn.Parameter]) -> Tensor:
    """The getters' check of ``out``: the result's exact dtype, writable, and sharing no memory with the model."""
    out = _check_vector(out, params, "out")
    dtype = _result_dtype(params)
    if out.dtype != dtype:
        raise TypeError(f"out must have the result's dtype {dtype}, got {out.dtype}")
    _check_writable([out], lambda _: "out")
    tensors_by_kind: list[tuple[str, list[Tensor | None]]] = [
        ("parameter", list(params)),
        ("gradient of parameter", [p.grad for p in params]),
    ]
    for kind, tensors in tensors_by_kind:
        hit = _first_overlap(out, tensors)
        if hit is not None:
            raise ValueError(
                f"out must not share memory with the model, but it overlaps the {kind} {_name(module, hit)!r}"
            )
    return out


def _dense(t: Tensor) -> Tensor:
    # A sparse gradient (nn.Embedding(sparse=True)) reads as its dense value;
    # to_dense() sums duplicate indices, as the gradient means.
    return t if t.layout == torch.strided else t.to_dense()


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
            [_dense(src) for src in sources if src is not None],
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


def _grads(params: list[nn.Parameter], out: Tensor | None) -> Tensor:
    if out is None:
        out = torch.empty(sum(p.numel() for p in params), dtype=_result_dtype(params), device=_device(params))
    return _write([p.grad for p in params], out, params)


def _device(params: list[nn.Parameter]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


def get_params(module: nn.Module, *, out: Tensor | None = None) -> Tensor:
    """Concatenate all parameters of ``module`` into one 1-D tensor.

    Without ``out`` the result is differentiable: a loss computed from it
    sends gradients back to the parameters (as an EWC penalty needs). Mixed
    dtypes are promoted to a common one, as :func:`torch.cat` does.

    Args:
        module: the module whose parameters are read.
        out: a 1-D tensor to write into instead of allocating, with one
            element per parameter element and exactly the result's dtype; it
            must share no memory with the parameters or their gradients. No
            autograd graph is recorded.

    Returns:
        The flat parameter vector (``out`` itself when given).

    Raises:
        TypeError: ``module`` is not a module, a parameter is not dense, or
            ``out`` is not a dense tensor of the result's dtype.
        ValueError: ``out`` is not 1-D, has the wrong number of elements, is
            on the meta device, cannot be written element by element, or
            overlaps a parameter or gradient.

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
        >>> get_params(layer, out=torch.empty(8, dtype=torch.int64))
        Traceback (most recent call last):
        ...
        TypeError: out must have the result's dtype torch.float32, got torch.int64
    """
    params = _parameters(module)
    if out is not None:
        return _write(list(params), _check_out(out, module, params), params)
    if not params:
        return torch.empty(0)
    return torch.cat([p.reshape(-1) for p in params])


def set_params(module: nn.Module, new_params: Tensor) -> None:
    """Copy a flat vector into the parameters of ``module``, in place.

    The parameter objects stay the same (optimizers and hooks keep working) and
    nothing aliases ``new_params``: each piece is copied, converted to the
    parameter's dtype and device. Everything is checked before anything is
    written. A vector that shares memory with the parameters (for example a
    slice of the buffer the parameters are views of) is copied to a temporary
    first, so the result is always the one a separate vector would give.

    Args:
        module: the module whose parameters are overwritten.
        new_params: a 1-D tensor with one element per parameter element, in
            the order of :func:`get_params`.

    Raises:
        TypeError: ``new_params`` is not a dense tensor, its dtype cannot be
            cast to a parameter's dtype, or a parameter is not dense.
        ValueError: ``new_params`` is not 1-D, has the wrong number of
            elements or is on the meta device; or a parameter cannot be
            written (an inference tensor outside inference mode, or elements
            that share memory).

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
    source = _check_source(new_params, params, "new_params")
    _check_writable(list(params), lambda i: f"parameter {_name(module, i)!r}")
    if _first_overlap(source, list(params)) is not None:
        source = source.clone()
    with torch.no_grad():
        _copy_all(list(params), _read(source, params))


def get_grads(module: nn.Module, *, out: Tensor | None = None) -> Tensor:
    """Concatenate all gradients of ``module`` into one 1-D tensor.

    The layout is that of :func:`get_params`. A parameter whose ``.grad`` is
    ``None`` (frozen, unused in the last backward, or before any backward)
    contributes zeros; a sparse gradient (``nn.Embedding(sparse=True)``)
    contributes its dense value. The result is detached from any graph.

    Args:
        module: the module whose gradients are read.
        out: a 1-D tensor to write into instead of allocating, with one
            element per parameter element and exactly the result's dtype; it
            must share no memory with the parameters or their gradients.

    Returns:
        The flat gradient vector (``out`` itself when given).

    Raises:
        TypeError: ``module`` is not a module, a parameter is not dense, or
            ``out`` is not a dense tensor of the result's dtype.
        ValueError: ``out`` is not 1-D, has the wrong number of elements, is
            on the meta device, cannot be written element by element, or
            overlaps a parameter or gradient.

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
    params = _parameters(module)
    return _grads(params, None if out is None else _check_out(out, module, params))


def set_grads(module: nn.Module, new_grads: Tensor) -> None:
    """Copy a flat vector into the gradients of ``module``.

    Each existing ``.grad`` is overwritten in place. Where ``.grad`` is
    ``None``, a new gradient (in the parameter's dtype, device and memory
    format) is filled first and only then attached, so no uninitialised
    memory is ever visible. New gradients are normal tensors even inside
    :func:`torch.inference_mode`, so a later backward can accumulate into
    them. Nothing aliases ``new_grads``, and everything is checked before
    anything is written.

    A parameter whose existing ``.grad`` is sparse is refused: it cannot be
    written in place, and replacing it with a dense tensor would change what
    the optimizer sees. Set those gradients to ``None`` first (for example
    with ``module.zero_grad()``).

    Args:
        module: the module whose gradients are overwritten.
        new_grads: a 1-D tensor with one element per parameter element, in
            the order of :func:`get_params`.

    Raises:
        TypeError: ``new_grads`` is not a dense tensor, its dtype cannot be
            cast to a parameter's dtype, or a parameter or existing
            gradient is not dense.
        ValueError: ``new_grads`` is not 1-D, has the wrong number of
            elements or is on the meta device; or an existing gradient cannot
            be written (an inference tensor outside inference mode, or
            elements that share memory).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import set_grads
        >>> layer = nn.Linear(3, 2)
        >>> set_grads(layer, torch.arange(8.0))
        >>> layer.bias.grad
        tensor([6., 7.])
    """
    _write_grads(module, new_grads, "new_grads", None)


def add_grads(module: nn.Module, vector: Tensor, *, alpha: float = 1.0) -> None:
    """Add ``alpha * vector`` into the gradients of ``module``, in place.

    It is :func:`set_grads`'s counterpart for penalties whose gradient is
    known in closed form: an EWC, SI or L2-anchor term adds
    ``2 * importance * (theta - anchor)`` to the gradients directly, instead
    of building the penalty from :func:`get_params` and back-propagating
    through an 11-million-element concatenation every step. A missing
    ``.grad`` is created with the value ``alpha * vector`` there (as if it had
    been zero). The checks and the all-or-nothing guarantee are
    :func:`set_grads`'s.

    Args:
        module: the module whose gradients grow.
        vector: a 1-D tensor with one element per parameter element, in the
            order of :func:`get_params`.
        alpha: the factor ``vector`` is multiplied by.

    Raises:
        TypeError: ``vector`` is not a dense tensor, its dtype cannot be cast
            to a parameter's dtype, ``alpha`` is not a real number, or a
            parameter or existing gradient is not dense.
        ValueError: ``vector`` is not 1-D, has the wrong number of elements or
            is on the meta device; or an existing gradient cannot be written.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import add_grads
        >>> layer = nn.Linear(3, 2)
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> add_grads(layer, torch.arange(8.0), alpha=0.5)
        >>> layer.bias.grad
        tensor([4.0000, 4.5000])
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    _write_grads(module, vector, "vector", float(alpha))


def _write_grads(module: nn.Module, vector: Tensor, name: str, alpha: float | None) -> None:
    """Set (alpha None) or add ``alpha *`` the vector into every gradient, after checking everything."""
    params = _parameters(module)
    source = _check_source(vector, params, name)
    grads = [p.grad for p in params]
    for i, grad in enumerate(grads):
        if grad is not None and grad.layout != torch.strided:
            raise TypeError(
                f"the gradient of parameter {_name(module, i)!r} must be dense (strided) to be written in place, "
                f"got layout {grad.layout}; set it to None first (module.zero_grad()) to have a dense one created"
            )
    _check_writable(grads, lambda i: f"the gradient of parameter {_name(module, i)!r}")
    if _first_overlap(source, grads) is not None:
        source = source.clone()
    with torch.no_grad():
        pieces = _read(source, params)
        # Stage every missing gradient with its final values before any
        # write, outside inference mode so that backward can use it later.
        with torch.inference_mode(False):
            created = [(p, _fresh(p, piece, alpha)) for p, piece in zip(params, pieces, strict=True) if p.grad is None]
        existing = [g for g in grads if g is not None]
        sources = [piece for piece, g in zip(pieces, grads, strict=True) if g is not None]
        if alpha is None:
            _copy_all(existing, sources)
        elif existing:
            torch._foreach_add_(existing, sources, alpha=alpha)
    for p, grad in created:
        p.grad = grad


def _fresh(p: Tensor, piece: Tensor, alpha: float | None) -> Tensor:
    grad = torch.empty_like(p).copy_(piece)
    return grad if alpha is None else grad.mul_(alpha)


def get_grads_list(module: nn.Module) -> list[Tensor]:
    """Return one flat gradient per parameter, in the order of :func:`get_params`.

    Each entry is a 1-D tensor in its parameter's dtype that owns its memory,
    whatever the strides of the ``.grad`` it comes from (zeros where
    ``.grad`` is ``None``, the dense value of a sparse gradient), so
    ``torch.cat(get_grads_list(m))`` equals ``get_grads(m)`` and writing to an
    entry never changes a gradient. On an accelerator, when all parameters
    share a dtype and device, the entries are views of one freshly allocated
    vector.

    Args:
        module: the module whose gradients are read.

    Returns:
        A list with one 1-D tensor per parameter.

    Raises:
        TypeError: ``module`` is not a module, or a parameter is not dense.

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
    if _fused(params):
        return _grads_list_fused(params)
    return _grads_list_each(params)


def _fused(params: list[nn.Parameter]) -> bool:
    """Whether one allocation and one multi-tensor copy serve ``get_grads_list`` best.

    On an accelerator they beat a launch per parameter. On the CPU,
    per-parameter copies are faster: small allocations reuse freed memory,
    one large one faults in fresh pages.
    """
    return bool(params) and params[0].device.type != "cpu" and len({(p.dtype, p.device) for p in params}) == 1


def _grads_list_fused(params: list[nn.Parameter]) -> list[Tensor]:
    """``get_grads_list`` as views of one fresh vector; the parameters must share dtype and device."""
    return list(torch.split(_grads(params, None), [p.numel() for p in params]))


def _grads_list_each(params: list[nn.Parameter]) -> list[Tensor]:
    """``get_grads_list`` as one fresh tensor per parameter."""
    with torch.no_grad():
        return [p.new_zeros(p.numel()) if p.grad is None else _owned_flat(p.grad) for p in params]


def _owned_flat(t: Tensor) -> Tensor:
    # to_dense() of a sparse gradient is already a fresh tensor. reshape(-1)
    # of a non-contiguous tensor is sometimes a view, so it cannot be trusted
    # to copy; contiguous() always copies a non-contiguous tensor.
    if t.layout != torch.strided:
        return t.to_dense().view(-1)
    return t.view(-1).clone() if t.is_contiguous() else t.contiguous().view(-1)
