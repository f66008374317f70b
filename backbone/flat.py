"""Flat vectors of a module's parameters and gradients.

Every function here walks the module's parameters with
:func:`backbone.layout.walk` (``module.named_parameters()``: depth first,
each tied parameter once, frozen ones included) and treats them as one 1-D
vector, each parameter flattened in row-major order: the layout that
:func:`~backbone.flat_layout` describes. They work on any
:class:`torch.nn.Module`; :class:`~backbone.MammothBackbone` exposes them as
methods.

With ``select=`` (see :func:`~backbone.selected_parameters`) the vector
covers only the selected parameters, in the same order; every promise below
holds for it, over those parameters, and the cost grows with their size.

The one invariant: every call's result equals the plain definition, worked
out from the module as it is at that call,

* ``get_params``: ``torch.cat([p.reshape(-1) for p in params])``;
* ``get_grads``: the same over ``p.grad``, with zeros where it is ``None``;
* ``set_params``, ``set_grads``: ``p.copy_(slice)`` (``p.grad.copy_(slice)``)
  for each parameter in turn, from a vector that shares no memory with them;
  ``add_grads``: ``p.grad.add_(slice, alpha=alpha)``, a missing gradient
  counting as zeros;

or the call raises :class:`TypeError` or :class:`ValueError` and leaves
parameters, gradients (values and objects) and buffers exactly as they were.

Nothing is remembered between calls: each call walks the module, checks the
vector, every destination and every memory overlap, and only then copies.
The module keeps no trace of a call, so a model is freed as soon as it is
unreachable, and a change to it between calls (a parameter replaced,
reshaped, moved, converted, made read-only) is always seen.
"""

# The module reads in layers: the checks, the memory overlaps, the copies,
# then the public functions.

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors

from ._checks import check_real
from .layout import Selection, walk, walk_selected_and_all

__all__ = ["add_grads", "get_grads", "get_grads_list", "get_params", "set_grads", "set_params"]


_grad = operator.attrgetter("grad")
_dtype = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_version = operator.attrgetter("_version")
_nbytes = operator.attrgetter("nbytes")
_layout = operator.attrgetter("layout")


# --- checks ------------------------------------------------------------------


def _result_dtype(params: list[nn.Parameter]) -> torch.dtype:
    """The dtype ``torch.cat`` of the parameters would have."""
    if not params:
        return torch.get_default_dtype()
    dtypes = set(map(_dtype, params))
    try:
        dtype: torch.dtype = functools.reduce(torch.promote_types, dtypes)
    except RuntimeError:  # float8 and some unsigned dtypes promote with nothing else
        raise TypeError(
            f"the parameters' dtypes {sorted(map(str, dtypes))} have no common dtype for one flat vector"
        ) from None
    return dtype


def _result_device(params: list[nn.Parameter]) -> torch.device:
    """Where a new flat vector goes: the first parameter's device."""
    return params[0].device if params else torch.device("cpu")


def _check_vector(vector: object, expected: int, name: str) -> Tensor:
    """Raise unless ``vector`` is a dense 1-D tensor with data and one element per parameter element."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.layout != torch.strided or vector.is_nested:
        layout = "a nested tensor" if vector.is_nested else f"layout {vector.layout}"
        raise TypeError(f"{name} must be a dense (strided) tensor, got {layout}")
    if vector.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    if vector.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(vector.shape)}")
    if vector.numel() != expected:
        raise ValueError(f"{name} must have {expected} elements (one per parameter element), got {vector.numel()}")
    return vector


def _check_castable(vector: Tensor, dtypes: set[torch.dtype], name: str) -> None:
    for dtype in dtypes:
        if not torch.can_cast(vector.dtype, dtype):
            raise TypeError(f"{name} has dtype {vector.dtype}, which cannot be cast to the parameters' {dtype}")


def _check_alpha(alpha: float, pairs: set[tuple[torch.dtype, torch.dtype]]) -> None:
    """Raise unless ``g.add_(v, alpha=alpha)`` is defined for every (gradient, vector) dtype pair.

    Each pair is tried once on a one-element tensor, so that whatever torch
    would refuse half-way through the gradients (an alpha that overflows a
    dtype, dtypes that do not promote) is refused before any is written.
    """
    for grad_dtype, dtype in pairs:
        if grad_dtype == torch.bool:
            raise TypeError("add_grads cannot add into bool gradients; use set_grads")
        if not (grad_dtype.is_floating_point or grad_dtype.is_complex) and isinstance(alpha, float):
            raise TypeError(f"alpha must be an int to add into {grad_dtype} gradients, got float {alpha!r}")
        try:
            torch.zeros(1, dtype=grad_dtype).add_(torch.zeros(1, dtype=dtype), alpha=alpha)
        except RuntimeError as error:
            raise ValueError(
                f"alpha={alpha!r} times a {dtype} vector cannot be added into {grad_dtype} gradients: {error}"
            ) from None


def _unwritable(t: Tensor) -> tuple[type[Exception], str] | None:
    """Why ``t`` cannot be written in place, element by element, here and now; None when it can."""
    if t.layout != torch.strided:
        return TypeError, f"must be a dense (strided) tensor, got layout {t.layout}"
    if not torch.is_inference_mode_enabled() and not _tracks_version(t):
        return ValueError, (
            "is an inference tensor (made under torch.inference_mode(), or converted from one) and cannot be "
            "written outside inference mode; expected a normal tensor (replace it with a clone made outside "
            "inference mode)"
        )
    if _shares_elements(t):
        return ValueError, (
            "cannot be written element by element: several of its elements share one memory location "
            f"(strides {t.stride()}, as from expand()); expected a tensor that owns each element, such as a clone"
        )
    return None


def _tracks_version(t: Tensor) -> bool:
    """Whether ``t`` has a version counter, without which torch refuses in-place writes outside inference mode.

    Inference tensors have none, except a Parameter made from one; a
    gradient that ``module.to()`` converted from an inference tensor has none
    either, though ``is_inference()`` says False.
    """
    try:
        t._version  # noqa: B018 - the probe is the attribute read
    except RuntimeError:
        return False
    return True


def _shares_elements(t: Tensor) -> bool:
    """Whether several elements of the dense tensor ``t`` may share one memory location (as after ``expand()``).

    Sorted by stride, each dimension must step past everything the smaller
    ones reach; a tensor that fails this (``as_strided`` over overlapping
    windows) is treated as sharing, even in the rare layouts that interleave
    without touching.
    """
    if t.is_contiguous() or t.numel() <= 1:
        return False
    reach = 0
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride(), strict=True) if s > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _check_writable(tensors: list[Tensor | None], what: Callable[[int], str]) -> None:
    """Raise, naming the tensor with ``what(index)``, unless every tensor can be written in place."""
    present = [t for t in tensors if t is not None]
    try:  # the common case, in a few C loops
        if not torch.is_inference_mode_enabled():
            list(map(_version, present))  # raises for a tensor without a version counter
        if all(map(Tensor.is_contiguous, present)):
            return
    except RuntimeError:
        pass
    for i, t in enumerate(tensors):
        problem = None if t is None else _unwritable(t)
        if problem is not None:
            error, reason = problem
            raise error(f"{what(i)} {reason}")


def _check_grads(names: list[str], params: list[nn.Parameter], grads: list[Tensor | None]) -> None:
    """Raise unless every existing gradient matches its parameter's shape, dtype and device.

    torch enforces this when ``.grad`` is assigned, but not when a
    parameter's ``.data`` is replaced afterwards; a gradient left behind
    would be read into, or written from, the wrong slice.
    """
    for name, p, g in zip(names, params, grads, strict=True):
        if g is not None and (g.shape != p.shape or g.dtype != p.dtype or g.device != p.device):
            raise ValueError(
                f"the gradient of parameter {name!r} must match the parameter (shape {tuple(p.shape)}, "
                f"{p.dtype}, {p.device}), got shape {tuple(g.shape)}, {g.dtype}, {g.device}; the parameter "
                "changed after its gradient was made: set the gradient to None first (module.zero_grad())"
            )


def _check_readable(names: list[str], sources: list[Tensor | None], device: torch.device, what: str) -> None:
    """Raise if a source is on the meta device (it holds no data) while the result is not."""
    if device.type == "meta":
        return
    present = [t for t in sources if t is not None]
    if all(d.type != "meta" for d in set(map(_device_of, present))):
        return
    for name, t in zip(names, sources, strict=True):
        if t is not None and t.device.type == "meta":
            raise ValueError(
                f"{what} {name!r} is on the meta device and holds no data to read; "
                "expected a module whose parameters hold data (materialise it with to_empty() first)"
            )


def _check_out(
    out: object,
    names: list[str],
    params: list[nn.Parameter],
    grads: list[Tensor | None],
    sources: list[Tensor | None],
    what: str,
) -> Tensor:
    """The getters' check of ``out``: the result's exact dtype, writable, and sharing no memory with the model."""
    out = _check_vector(out, sum(p.numel() for p in params), "out")
    dtype = _result_dtype(params)
    if out.dtype != dtype:
        raise TypeError(f"out must have the result's dtype {dtype}, got {out.dtype}")
    _check_writable([out], lambda _: "out")
    _check_apart(out, names, params, grads)
    _check_readable(names, sources, out.device, what)
    return out


def _check_apart(out: Tensor, names: list[str], params: list[nn.Parameter], grads: list[Tensor | None]) -> None:
    """Raise if ``out`` shares memory with a parameter or a gradient."""
    for kind, tensors in (("parameter", params), ("gradient of parameter", grads)):
        hit = _first_overlap(out, tensors)
        if hit is not None:
            raise ValueError(f"out must not share memory with the model, but it overlaps the {kind} {names[hit]!r}")


def _check_apart_from_all(out: Tensor, names: list[str], params: list[nn.Parameter], selected: int) -> None:
    """With a selection, ``out`` must also stay apart from the parameters and gradients it leaves out."""
    if selected != len(params):
        _check_apart(out, names, params, list(map(_grad, params)))


# --- memory overlaps -------------------------------------------------------


def _span(t: Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` that the dense tensor ``t`` can read or write.

    Strides are never negative, so the first element is at the lowest
    address and the last element at the highest.
    """
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + t.nbytes
    if t.numel() == 0:
        return start, start
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + extent * t.element_size()


def _first_overlap(vector: Tensor, tensors: Sequence[Tensor | None]) -> int | None:
    """The index of the first tensor whose bytes intersect ``vector``'s on its device, if any.

    Memory is compared by address ranges, whatever storage objects the
    tensors come from (two storages can share memory, as ``from_numpy``
    views of one array do). The ranges are conservative for interleaved
    views, which are then treated as overlapping.
    """
    if vector.numel() == 0 or vector.device.type == "meta":
        return None
    low, high = _span(vector)
    indices = list(itertools.compress(range(len(tensors)), map(operator.is_not, tensors, itertools.repeat(None))))
    present = [cast(Tensor, tensors[i]) for i in indices]
    if not set(map(_layout, present)) <= {torch.strided}:
        # A sparse tensor's memory is that of its values and indices.
        pairs = [(i, part) for i, t in zip(indices, present, strict=True) for part in _memory_parts(t)]
        indices, present = [i for i, _ in pairs], [part for _, part in pairs]
    # A first pass in C loops: a tensor that starts at or after the vector's
    # end cannot reach it (strides are never negative), nor can a contiguous
    # one that ends at or before its start.
    rows = zip(map(Tensor.data_ptr, present), map(_nbytes, present), map(Tensor.is_contiguous, present), strict=True)
    near = [j for j, (start, size, dense) in enumerate(rows) if start < high and (not dense or start + size > low)]
    for j in near:
        start, end = _span(present[j])
        if low < end and start < high and present[j].device == vector.device:
            return indices[j]
    return None


def _memory_parts(t: Tensor) -> tuple[Tensor, ...]:
    """The dense tensors whose memory ``t`` reads: itself, or a sparse tensor's values and indices."""
    if t.layout == torch.strided:
        return (t,)
    if t.layout == torch.sparse_coo:
        return (t._values(), t._indices())
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return (t.values(), t.crow_indices(), t.col_indices())
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return (t.values(), t.ccol_indices(), t.row_indices())
    return ()


# --- copies ----------------------------------------------------------------


def _dense(t: Tensor) -> Tensor:
    # A sparse gradient (nn.Embedding(sparse=True)) reads as its dense value;
    # to_dense() sums duplicate indices, as the gradient means.
    return t if t.layout == torch.strided else t.to_dense()


def _pieces(vector: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Views of ``vector`` shaped like each parameter in turn, one after the other (the layout).

    torch's own helper builds them in one C++ call; building each view from
    Python costs a few microseconds a parameter.
    """
    return list(_unflatten_dense_tensors(vector, params)) if params else []  # type: ignore[no-untyped-call]


def _copy_all(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """``d.copy_(s)`` for every pair, in order, in as few kernel launches as torch allows.

    On CUDA, ``_foreach_copy_`` copies many tensors per launch; where it
    cannot (mixed dtypes or devices, the CPU) torch falls back to one
    ``copy_`` per pair, in order.
    """
    if not destinations:
        return
    if _lazy_views(destinations, sources):
        for d, s in zip(destinations, sources, strict=True):
            d.copy_(s)
        return
    torch._foreach_copy_(destinations, sources)


def _lazy_views(destinations: list[Tensor], sources: list[Tensor]) -> bool:
    """Whether any tensor is a conjugate or negative view: the multi-tensor kernels refuse those, and the
    one-tensor ones resolve them."""
    return any(t.is_conj() or t.is_neg() for t in (*destinations, *sources))


def _add_all(destinations: list[Tensor], sources: list[Tensor], alpha: float) -> None:
    """``d.add_(s, alpha=alpha)`` for every pair, in as few kernel launches as torch allows."""
    if _lazy_views(destinations, sources):
        for d, s in zip(destinations, sources, strict=True):
            d.add_(s, alpha=alpha)
        return
    torch._foreach_add_(destinations, sources, alpha=alpha)


def _fill(pieces: list[Tensor], sources: list[Tensor | None]) -> None:
    """Copy each source into its piece, zeroing the pieces whose source is None."""
    if all(map(operator.is_not, sources, itertools.repeat(None))) and set(map(_layout, sources)) <= {torch.strided}:
        _copy_all(pieces, cast(list[Tensor], sources))  # the common case, in C loops
        return
    present = [(piece, _dense(s)) for piece, s in zip(pieces, sources, strict=True) if s is not None]
    if present:
        _copy_all([piece for piece, _ in present], [s for _, s in present])
    if len(present) < len(pieces):
        torch._foreach_zero_([piece for piece, s in zip(pieces, sources, strict=True) if s is None])


def _gather(params: list[nn.Parameter], sources: list[Tensor | None], out: Tensor | None) -> Tensor:
    """Copy each source into its slice of ``out`` (a new vector when None); a missing source writes zeros."""
    with torch.no_grad():
        if out is None:
            total = sum(p.numel() for p in params)
            out = torch.empty(total, dtype=_result_dtype(params), device=_result_device(params))
        _fill(_pieces(out, params), sources)
    return out


def _slices(vector: Tensor, params: list[nn.Parameter], *, convert: bool) -> list[Tensor]:
    """Pieces of ``vector`` shaped like each parameter, on its device (and, with ``convert``, in its dtype).

    When the parameters share a device (and dtype), the vector is moved (and
    converted) once, rather than once per parameter. Converting first and
    then copying rounds exactly as one ``copy_`` does.
    """
    devices = set(map(_device_of, params))
    if len(devices) == 1:
        dtypes = set(map(_dtype, params))
        dtype = next(iter(dtypes)) if convert and len(dtypes) == 1 else None
        vector = vector.to(device=next(iter(devices)), dtype=dtype)
    return _pieces(vector, params)


# --- the public functions ---------------------------------------------------


def get_params(module: nn.Module, *, out: Tensor | None = None, select: Selection = None) -> Tensor:
    """Concatenate all parameters of ``module`` into one 1-D tensor.

    Without ``out`` the result is differentiable: a loss computed from it
    sends gradients back to the parameters (as an EWC penalty needs). Mixed
    dtypes are promoted to a common one, as :func:`torch.cat` does.

    Args:
        module: the module whose parameters are read.
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.
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
    names, params, all_names, all_params = walk_selected_and_all(module, select)
    if out is not None:
        grads = list(map(_grad, params))
        out = _check_out(out, names, params, grads, list(params), "parameter")
        _check_apart_from_all(out, all_names, all_params, len(params))
        return _gather(params, list(params), out)
    if not params:
        return torch.empty(0)
    device = _result_device(params)
    _result_dtype(params)  # refuses dtypes that torch.cat cannot promote together
    _check_readable(names, list(params), device, "parameter")
    if len(set(map(_device_of, params))) == 1:
        return torch.cat([p.reshape(-1) for p in params])
    return torch.cat([p.reshape(-1).to(device) for p in params])


def set_params(module: nn.Module, new_params: Tensor, *, select: Selection = None) -> None:
    """Copy a flat vector into the parameters of ``module``, in place.

    The parameter objects stay the same (optimizers and hooks keep working) and
    nothing aliases ``new_params``: each piece is copied, converted to the
    parameter's dtype and device. Everything is checked before anything is
    written. A vector that shares memory with the parameters (for example a
    slice of the buffer the parameters are views of) is copied to a temporary
    first, so the result is always the one a separate vector would give.

    Args:
        module: the module whose parameters are overwritten.
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.
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
    names, params = walk(module, select)
    source = _check_vector(new_params, sum(p.numel() for p in params), "new_params")
    _check_castable(source, set(map(_dtype, params)), "new_params")
    _check_writable(list(params), lambda i: f"parameter {names[i]!r}")
    if _first_overlap(source, params) is not None:
        source = source.clone()
    with torch.no_grad():
        _copy_all(list(params), _slices(source, params, convert=True))


def get_grads(module: nn.Module, *, out: Tensor | None = None, select: Selection = None) -> Tensor:
    """Concatenate all gradients of ``module`` into one 1-D tensor.

    The layout is that of :func:`get_params`. A parameter whose ``.grad`` is
    ``None`` (frozen, unused in the last backward, or before any backward)
    contributes zeros; a sparse gradient (``nn.Embedding(sparse=True)``)
    contributes its dense value. The result is detached from any graph.

    Args:
        module: the module whose gradients are read.
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.
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
    names, params, all_names, all_params = walk_selected_and_all(module, select)
    grads = list(map(_grad, params))
    _check_grads(names, params, grads)
    if out is None:
        _check_readable(names, grads, _result_device(params), "the gradient of parameter")
    else:
        out = _check_out(out, names, params, grads, grads, "the gradient of parameter")
        _check_apart_from_all(out, all_names, all_params, len(params))
    return _gather(params, grads, out)


def set_grads(module: nn.Module, new_grads: Tensor, *, select: Selection = None) -> None:
    """Copy a flat vector into the gradients of ``module``.

    Each existing ``.grad`` is overwritten in place. Where ``.grad`` is
    ``None``, a new gradient (in the parameter's dtype, device and memory
    format) is filled first and only then attached, so no uninitialised
    memory is ever visible. New gradients are normal tensors even inside
    :func:`torch.inference_mode`, so a later backward can accumulate into
    them. Every ``.grad`` written is plain data, whatever graph
    ``new_grads`` carries: an existing ``.grad`` that itself requires grad
    (left by ``backward(create_graph=True)``) is replaced by a new one
    rather than written into. Nothing aliases ``new_grads``, and everything
    is checked before anything is written.

    A parameter whose existing ``.grad`` is sparse is refused: it cannot be
    written in place, and replacing it with a dense tensor would change what
    the optimizer sees. Set those gradients to ``None`` first (for example
    with ``module.zero_grad()``).

    Args:
        module: the module whose gradients are overwritten.
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.
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
    _write_grads(module, new_grads, "new_grads", None, select)


def add_grads(module: nn.Module, vector: Tensor, *, alpha: float = 1.0, select: Selection = None) -> None:
    """Add ``alpha * vector`` into the gradients of ``module``, in place.

    It is :func:`set_grads`'s counterpart for penalties whose gradient is
    known in closed form: an EWC, SI or L2-anchor term adds
    ``2 * importance * (theta - anchor)`` to the gradients directly, instead
    of building the penalty from :func:`get_params` and back-propagating
    through an 11-million-element concatenation every step. A missing
    ``.grad`` is created with the value ``alpha * vector`` there (as if it had
    been zero). The checks, the all-or-nothing guarantee and the plain data
    left on ``.grad`` are :func:`set_grads`'s.

    Args:
        module: the module whose gradients grow.
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.
        vector: a 1-D tensor with one element per parameter element, in the
            order of :func:`get_params`.
        alpha: the factor ``vector`` is multiplied by.

    Raises:
        TypeError: ``vector`` is not a dense tensor, its dtype cannot be cast
            to a parameter's dtype, ``alpha`` is not a real number (or is a
            float where a gradient is of an integer dtype), a gradient is
            bool, or a parameter or existing gradient is not dense.
        ValueError: ``vector`` is not 1-D, has the wrong number of elements or
            is on the meta device; an existing gradient cannot be written or
            no longer matches its parameter; or ``alpha`` cannot be added
            into a gradient's dtype (torch refuses it: it overflows that
            dtype, or the dtypes do not promote). Values are not checked: a
            sum that overflows a gradient's dtype gives ``inf`` there, as
            ``Tensor.add_`` does.

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
    alpha = check_real(alpha, "alpha")
    if isinstance(alpha, int) and not -(2**63) <= alpha < 2**63:
        raise ValueError(f"alpha must fit in 64 bits, got {alpha}")
    _write_grads(module, vector, "vector", alpha, select)


def _write_grads(module: nn.Module, vector: Tensor, name: str, alpha: float | None, select: Selection) -> None:
    """Set (alpha None) or add ``alpha *`` the vector into every gradient, after checking everything."""
    names, params = walk(module, select)
    # Gradients are plain data: whatever graph the vector carries stays with the vector.
    source = _check_vector(vector, sum(p.numel() for p in params), name).detach()
    grads: list[Tensor | None] = list(map(_grad, params))
    for i, grad in enumerate(grads):
        if grad is not None and grad.layout != torch.strided:
            raise TypeError(
                f"the gradient of parameter {names[i]!r} must be dense (strided) to be written in place, "
                f"got layout {grad.layout}; set it to None first (module.zero_grad()) to have a dense one created"
            )
    _check_grads(names, params, grads)
    _check_castable(source, set(map(_dtype, params)), name)
    if alpha is not None:
        # Adding keeps the vector's dtype (see _slices), so these are the pairs the adds will meet.
        _check_alpha(alpha, {(dtype, source.dtype) for dtype in set(map(_dtype, params))})
    _check_writable(grads, lambda i: f"the gradient of parameter {names[i]!r}")
    if _first_overlap(source, grads) is not None:
        source = source.clone()
    with torch.no_grad():
        # Adding rounds once, from the vector's own dtype, as add_ does.
        pieces = _slices(source, params, convert=alpha is None)
        # Make every missing gradient with its final values before any write,
        # outside inference mode so that a later backward can add into it.
        # A gradient that carries a graph (from backward(create_graph=True), or a Parameter used as one) is
        # replaced by plain data rather than written into, so that no .grad is left with a grad_fn.
        with torch.inference_mode(False):
            created = [
                (p, _fresh(p, piece, alpha, g))
                for p, piece, g in zip(params, pieces, grads, strict=True)
                if g is None or g.requires_grad
            ]
        existing = [(g, piece) for g, piece in zip(grads, pieces, strict=True) if g is not None and not g.requires_grad]
        destinations, sources = [g for g, _ in existing], [piece for _, piece in existing]
        if alpha is None:
            _copy_all(destinations, sources)
        elif destinations:
            _add_all(destinations, sources, alpha)
    for p, grad in created:
        p.grad = grad


def _fresh(p: Tensor, piece: Tensor, alpha: float | None, old: Tensor | None = None) -> Tensor:
    """A new gradient for ``p`` (its dtype, device and strides) holding ``piece``, or ``old + alpha * piece``."""
    grad = torch.empty_like(p)
    if alpha is None:
        return grad.copy_(piece)
    return (grad.zero_() if old is None else grad.copy_(old.detach())).add_(piece, alpha=alpha)


def get_grads_list(module: nn.Module, *, select: Selection = None) -> list[Tensor]:
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
        select: which parameters the vector covers (see
            :func:`~backbone.selected_parameters`, whose errors an invalid one
            raises); all of them by default.

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
    names, params = walk(module, select)
    grads = list(map(_grad, params))
    _check_grads(names, params, grads)
    if _fused(params):
        vector = _gather(params, grads, None)
        return list(torch.split(vector, [p.numel() for p in params]))
    with torch.no_grad():
        return [p.new_zeros(p.numel()) if g is None else _owned_flat(g) for p, g in zip(params, grads, strict=True)]


def _fused(params: list[nn.Parameter]) -> bool:
    """Whether one allocation and one multi-tensor copy serve ``get_grads_list`` best.

    On an accelerator they beat a launch per parameter. On the CPU,
    per-parameter copies are faster: small allocations reuse freed memory,
    one large one faults in fresh pages.
    """
    return bool(params) and params[0].device.type != "cpu" and len({(p.dtype, p.device) for p in params}) == 1


def _owned_flat(t: Tensor) -> Tensor:
    """A fresh 1-D copy of ``t``'s dense value, whatever its strides.

    A contiguous clone, rather than ``reshape`` (sometimes a view) or a view
    of the gradient, which fails on a gradient that ``module.to()``
    converted out of an inference tensor (it has no version counter).
    """
    if t.layout != torch.strided:
        return t.to_dense().view(-1)
    return t.clone(memory_format=torch.contiguous_format).view(-1)
