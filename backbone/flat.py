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

What the operations learn about a module (its parameter list, sizes, dtypes,
which parameters can be written) is worked out once and kept, weakly keyed
by the module, for as long as it holds: every call first checks that each
visited module still holds the same parameter and submodule objects and that
every parameter keeps its data address, element count and dtype, so
replacing, moving, converting or growing a parameter is always seen. A module
class that overrides ``parameters()`` (or the walk behind it) is walked on
every call. Models whose tensors average fewer than 4,096 elements copy
through a staging vector kept with the plan, which costs one vector of
memory per model and one bulk copy, instead of building a view per parameter
on every call.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import operator
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors

__all__ = ["add_grads", "get_grads", "get_grads_list", "get_params", "set_grads", "set_params"]


_grad = operator.attrgetter("grad")
_dtype = operator.attrgetter("dtype")

# Below this many elements per parameter on average, building one view per
# parameter (about a microsecond each) costs more than copying the whole
# vector once, so such models copy through a staging vector whose views are
# built once per plan.
_SMALL_AVERAGE = 4096

# The methods whose standard versions make parameters() a function of the
# modules' ``_parameters`` and ``_modules`` slots alone.
_WALK = ("parameters", "named_parameters", "_named_members", "named_modules")


class _Plan:
    """What the flat operations need to know about a module's parameters, worked out once per layout.

    Walking ``module.parameters()``, checking each parameter and building one
    view per parameter cost about a microsecond a parameter: on a model of a
    thousand small tensors, several times the copy itself. A plan keeps the
    results, and :meth:`current` tells in a few passes of C loops whether they
    still hold.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], modules: list[nn.Module]) -> None:
        self.params = params
        self.total = sum(p.numel() for p in params)
        self.dtype = _result_dtype(params)
        self.dtypes = frozenset(p.dtype for p in params)
        kinds = {(p.dtype, p.device) for p in params}
        self.kind = next(iter(kinds)) if len(kinds) == 1 else None
        devices = {device for _, device in kinds}
        self.device = next(iter(devices)) if len(devices) == 1 else None
        self.inference = next((i for i, p in enumerate(params) if p.is_inference()), None)
        self.shared = next((i for i, p in enumerate(params) if _shares_elements(p)), None)
        # A tensor without elements or on meta has no address to watch.
        unwatchable = any(p.device.type == "meta" or p.numel() == 0 for p in params)
        self.cacheable = not unwatchable and _standard_walk(module, modules)
        # What only a kept plan needs, left out of one built for a single call.
        # The slots of every module the walk visits; the root is not held, so
        # that the cache (keyed weakly by the root) lets it be collected.
        self._tree = (
            [(None if m is module else m, tuple(m._parameters.values()), tuple(m._modules.values())) for m in modules]
            if self.cacheable
            else []
        )
        self._watch = self._fingerprint() if self.cacheable else None
        self._by_address = sorted((p.data_ptr(), i) for i, p in enumerate(params)) if self.cacheable else None
        self.small = self.cacheable and self.kind is not None and self.total < _SMALL_AVERAGE * len(params)
        self.lock = threading.Lock()
        self._staging: tuple[Tensor, list[Tensor]] | None = None

    def current(self, module: nn.Module) -> bool:
        """Whether the walk would find the same parameters, each where, as large and of the dtype it was.

        The same objects in every visited module's parameter and submodule
        slots make the walk the same; the same data address, element count
        and dtype catch a parameter's data being replaced (``p.data = ...``,
        ``.to()``, ``.double()``, a grown classifier, a view of its own
        data).
        """
        same = operator.is_
        for m, params, children in self._tree:
            owner = module if m is None else m
            p, c = owner._parameters.values(), owner._modules.values()
            if len(p) != len(params) or len(c) != len(children):
                return False
            if not (all(map(same, p, params)) and all(map(same, c, children))):
                return False
        return self._fingerprint() == self._watch

    def _fingerprint(self) -> tuple[list[int], list[int], list[torch.dtype]]:
        params = self.params
        return list(map(Tensor.data_ptr, params)), list(map(Tensor.numel, params)), list(map(_dtype, params))

    def staging(self) -> tuple[Tensor, list[Tensor]]:
        """A vector in the parameters' dtype and device, and its views shaped like each parameter.

        Only small models use it; it is built on first use and kept.
        """
        if self._staging is None:
            assert self.kind is not None
            dtype, device = self.kind
            # A normal tensor, and views made outside no_grad and inference
            # mode, so that they can be written in any mode later.
            with torch.inference_mode(False), torch.enable_grad():
                vector = torch.empty(self.total, dtype=dtype, device=device)
                self._staging = (vector, _pieces(vector, self.params))
        return self._staging

    def first_overlap(self, vector: Tensor) -> int | None:
        """The index of the first parameter that shares memory with ``vector``, if any."""
        if self._by_address is None:
            return _first_overlap(vector, list(self.params))
        if vector.numel() == 0 or vector.device.type == "meta":
            return None
        storage = vector.untyped_storage()
        low, high = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        hits = []
        # Tensors outside the vector's storage cannot overlap it.
        for address, i in self._by_address[bisect.bisect_left(self._by_address, (low, -1)) :]:
            if address >= high:
                break
            if _overlap(vector, self.params[i]):
                hits.append(i)
        return min(hits, default=None)


_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


def _standard_walk(module: nn.Module, modules: list[nn.Module]) -> bool:
    root = type(module)
    return all(getattr(root, name) is getattr(nn.Module, name) for name in _WALK) and all(
        type(m).named_modules is nn.Module.named_modules for m in modules
    )


def _plan(module: object) -> _Plan:
    """The module's plan: the cached one while it is current, a new one otherwise."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    try:
        plan = _PLANS.get(module)
    except TypeError:  # a module class that made itself unhashable
        plan = None
    if plan is not None and plan.current(module):
        return plan
    plan = _Plan(module, _parameters(module), [m for _, m in module.named_modules()])
    if plan.cacheable:
        with contextlib.suppress(TypeError):
            _PLANS[module] = plan
    return plan


def _parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module``, refusing any that is not a dense tensor."""
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
    strided = torch.strided
    for i, t in enumerate(tensors):
        if (
            t is not None
            and t.layout == strided
            and low <= t.data_ptr() < high
            and t.device == device
            and _overlap(vector, t)
        ):
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
    if _shares_elements(t):
        return ValueError, (
            "cannot be written element by element: several of its elements share one memory location "
            f"(strides {t.stride()}, as from expand()); expected a tensor that owns each element, such as a clone"
        )
    return None


def _shares_elements(t: Tensor) -> bool:
    """Whether several elements of the dense tensor ``t`` share one memory location (as after ``expand()``)."""
    return not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1


def _check_params_writable(module: nn.Module, plan: _Plan) -> None:
    """Raise unless every parameter can be written in place here and now."""
    for i in sorted(i for i in (plan.inference, plan.shared) if i is not None):
        _check_writable([plan.params[i]], lambda _, i=i: f"parameter {_name(module, i)!r}")  # type: ignore[misc]


def _check_writable(tensors: list[Tensor | None], what: Callable[[int], str]) -> None:
    """Raise, naming the tensor with ``what(index)``, unless every tensor can be written in place."""
    for i, t in enumerate(tensors):
        problem = None if t is None else _unwritable(t)
        if problem is not None:
            error, reason = problem
            raise error(f"{what(i)} {reason}")


def _check_vector(vector: object, expected: int, name: str) -> Tensor:
    """Raise unless ``vector`` is a dense 1-D tensor with data and one element per parameter element."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {vector.layout}")
    if vector.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    if vector.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(vector.shape)}")
    if vector.numel() != expected:
        raise ValueError(f"{name} must have {expected} elements (one per parameter element), got {vector.numel()}")
    return vector


def _check_source(vector: object, plan: _Plan, name: str) -> Tensor:
    """The setters' check: a vector of the right length whose dtype casts to every parameter's."""
    vector = _check_vector(vector, plan.total, name)
    for dtype in plan.dtypes:
        if not torch.can_cast(vector.dtype, dtype):
            raise TypeError(f"{name} has dtype {vector.dtype}, which cannot be cast to the parameters' {dtype}")
    return vector


def _check_out(out: object, module: nn.Module, plan: _Plan, grads: list[Tensor | None]) -> Tensor:
    """The getters' check of ``out``: the result's exact dtype, writable, and sharing no memory with the model."""
    out = _check_vector(out, plan.total, "out")
    if out.dtype != plan.dtype:
        raise TypeError(f"out must have the result's dtype {plan.dtype}, got {out.dtype}")
    _check_writable([out], lambda _: "out")
    for kind, hit in (("parameter", plan.first_overlap(out)), ("gradient of parameter", _first_overlap(out, grads))):
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


def _gather(plan: _Plan, sources: list[Tensor | None], out: Tensor | None) -> Tensor:
    """Copy each source into its slice of ``out`` (a new vector when None); a missing source writes zeros.

    Small models fill the plan's staging vector through its ready-made views
    and copy it out whole; the others build views of ``out`` (one C++ call).
    """
    present = [s is not None for s in sources]
    dense = [_dense(s) for s in sources if s is not None]
    with torch.no_grad():
        if plan.small:
            with plan.lock:
                staging, pieces = plan.staging()
                _fill(pieces, present, dense)
                return staging.clone() if out is None else out.copy_(staging)
        if out is None:
            out = torch.empty(plan.total, dtype=plan.dtype, device=_device(plan.params))
        _fill(_pieces(out, plan.params), present, dense)
    return out


def _fill(pieces: list[Tensor], present: list[bool], sources: list[Tensor]) -> None:
    """Copy ``sources`` into the pieces marked present, in order, and zero the others."""
    if all(present):
        _copy_all(pieces, sources)
        return
    _copy_all([piece for piece, here in zip(pieces, present, strict=True) if here], sources)
    missing = [piece for piece, here in zip(pieces, present, strict=True) if not here]
    torch._foreach_zero_(missing)


@contextlib.contextmanager
def _scattered(plan: _Plan, vector: Tensor) -> Iterator[list[Tensor]]:
    """Pieces of ``vector`` shaped like each parameter, converted to its dtype and device, and safe to read
    while any parameter or gradient is written (``vector`` may overlap them)."""
    if plan.small:
        with plan.lock:
            staging, pieces = plan.staging()
            # One bulk copy (and conversion) into memory no parameter or
            # gradient can share, instead of building a view per parameter.
            staging.copy_(vector)
            yield pieces
        return
    yield _read(vector, plan)


def _read(vector: Tensor, plan: _Plan) -> list[Tensor]:
    """Pieces of ``vector`` shaped like each parameter, converted once where they agree."""
    if plan.device is not None:
        # One transfer (and conversion) for the whole vector rather than one
        # per parameter; same-dtype pieces also keep the multi-tensor fast path.
        vector = vector.to(device=plan.device, dtype=plan.kind[0] if plan.kind else None)
    return _pieces(vector, plan.params)


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
    plan = _plan(module)
    if out is not None:
        out = _check_out(out, module, plan, list(map(_grad, plan.params)))
        return _gather(plan, list(plan.params), out)
    if not plan.params:
        return torch.empty(0)
    return torch.cat([p.reshape(-1) for p in plan.params])


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
    plan = _plan(module)
    source = _check_source(new_params, plan, "new_params")
    _check_params_writable(module, plan)
    if not plan.small and plan.first_overlap(source) is not None:
        source = source.clone()
    with torch.no_grad(), _scattered(plan, source) as pieces:
        _copy_all(list(plan.params), pieces)


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
    plan = _plan(module)
    grads = list(map(_grad, plan.params))
    return _gather(plan, grads, None if out is None else _check_out(out, module, plan, grads))


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
    plan = _plan(module)
    params = plan.params
    source = _check_source(vector, plan, name)
    grads: list[Tensor | None] = list(map(_grad, params))
    for i, grad in enumerate(grads):
        if grad is not None and grad.layout != torch.strided:
            raise TypeError(
                f"the gradient of parameter {_name(module, i)!r} must be dense (strided) to be written in place, "
                f"got layout {grad.layout}; set it to None first (module.zero_grad()) to have a dense one created"
            )
    _check_writable(grads, lambda i: f"the gradient of parameter {_name(module, i)!r}")
    if not plan.small and _first_overlap(source, grads) is not None:
        source = source.clone()
    with torch.no_grad(), _scattered(plan, source) as pieces:
        # Stage every missing gradient with its final values before any
        # write, outside inference mode so that backward can use it later.
        with torch.inference_mode(False):
            created = [
                (p, _fresh(p, piece, alpha)) for p, piece, g in zip(params, pieces, grads, strict=True) if g is None
            ]
        if created:
            existing = [g for g in grads if g is not None]
            sources = [piece for piece, g in zip(pieces, grads, strict=True) if g is not None]
        else:
            existing, sources = cast(list[Tensor], grads), pieces
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
    params = _plan(module).params
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
    grads = list(map(_grad, params))
    out = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    with torch.no_grad():
        _fill(_pieces(out, params), [g is not None for g in grads], [_dense(g) for g in grads if g is not None])
    return list(torch.split(out, [p.numel() for p in params]))


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
