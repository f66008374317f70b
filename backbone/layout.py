"""What each element of a flat vector is, and how to carry a vector to a new layout.

A flat parameter or gradient vector (:func:`~backbone.get_params`,
:func:`~backbone.get_grads`) is laid out by ``module.named_parameters()``:
each parameter, flattened in row-major order, one after the other. When the
network changes shape (a classifier that grows), the layout changes, and every
vector a method keeps (an EWC anchor and importance, an A-GEM reference
gradient) must move with it. :func:`~backbone.flat_layout` describes a layout;
:func:`~backbone.carry_vector` moves a vector from one layout to another.

A vector may also cover a *selection* of the parameters, given at the call
as ``select=`` and resolved against the module as it is then (nothing is
remembered):

* ``None`` or ``"all"``: every parameter, frozen ones included (the
  default everywhere, as the documented contract has it);
* ``"trainable"``: the parameters whose ``requires_grad`` is set now;
* ``"no_classifier"``: every parameter but the classifier's (what Mammoth's
  ViT calls ``discard_classifier=True``); the classifier is
  ``module.get_classifier()``, or ``module.classifier`` for a module without
  that method;
* a predicate ``(name, parameter) -> bool``;
* an iterable of parameter names (a tied parameter answers to any of its
  names);
* a :class:`FlatLayout` taken earlier with the same selection: its
  parameters, which must still be there with the same shapes and dtypes.

The selected parameters keep the flat-vector order. An explicit selection
that picks nothing is an error.
"""

from __future__ import annotations

import bisect
import difflib
import math
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._checks import check_module

__all__ = ["SELECTIONS", "FlatLayout", "LayoutEntry", "Selection", "carry_vector", "flat_layout", "selected_parameters"]


@dataclass(frozen=True)
class LayoutEntry:
    """One parameter's place in a flat vector.

    Attributes:
        name: the parameter's qualified name, as ``named_parameters()`` gives it.
        offset: the index of its first element in the vector.
        shape: its shape.
        dtype: its dtype.

    Example:
        >>> from torch import nn
        >>> from backbone import flat_layout
        >>> entry = flat_layout(nn.Linear(3, 2))["bias"]
        >>> entry.offset, entry.shape, entry.numel
        (6, (2,), 2)
    """

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        """The number of elements.

        Example:
            >>> from torch import nn
            >>> from backbone import flat_layout
            >>> flat_layout(nn.Linear(3, 2))["weight"].numel
            6
        """
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        """The index just after its last element.

        Example:
            >>> from torch import nn
            >>> from backbone import flat_layout
            >>> flat_layout(nn.Linear(3, 2))["weight"].stop
            6
        """
        return self.offset + self.numel


@dataclass(frozen=True)
class FlatLayout:
    """The layout of a module's flat vectors: one :class:`LayoutEntry` per parameter, in order.

    Index it by parameter name; :meth:`view` and :meth:`span` give the part
    of a vector that belongs to a parameter or to a submodule.

    Attributes:
        entries: the parameters, in the order of ``named_parameters()``.

    Example:
        >>> from backbone import MNISTMLP, flat_layout
        >>> layout = flat_layout(MNISTMLP(4, 2, hidden_size=3))
        >>> layout.numel, [e.name for e in layout][:2]
        (35, ['fc1.weight', 'fc1.bias'])
    """

    entries: tuple[LayoutEntry, ...]

    @property
    def numel(self) -> int:
        """The length of a flat vector with this layout.

        Example:
            >>> from torch import nn
            >>> from backbone import flat_layout
            >>> flat_layout(nn.Linear(3, 2)).numel
            8
        """
        return self.entries[-1].stop if self.entries else 0

    def __iter__(self) -> Iterator[LayoutEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return any(entry.name == name for entry in self.entries)

    def __getitem__(self, name: str) -> LayoutEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        known = ", ".join(entry.name for entry in self.entries[:8])
        more = ", ..." if len(self.entries) > 8 else ""
        raise KeyError(f"no parameter named {name!r} in this layout; it has {known}{more}")

    def span(self, prefix: str) -> slice:
        """The slice of a flat vector that holds the parameters of the submodule ``prefix``.

        Args:
            prefix: a submodule's qualified name (``"classifier"``,
                ``"layer1"``), or a parameter's.

        Returns:
            ``slice(start, stop)``.

        A submodule's parameters are always contiguous in the vector, since
        ``named_parameters()`` walks the modules depth first. A parameter
        tied into it from elsewhere belongs, by name, to wherever it first
        appears.

        Raises:
            KeyError: no parameter is under ``prefix``.

        Example:
            >>> from backbone import MNISTMLP, flat_layout
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> layout = flat_layout(net)
            >>> layout.span("classifier")
            slice(27, 35, None)
            >>> net.get_params()[layout.span("classifier")].shape
            torch.Size([8])
        """
        inside = [e for e in self.entries if e.name == prefix or e.name.startswith(prefix + ".")]
        if not inside:
            raise KeyError(f"no parameter under {prefix!r} in this layout")
        return slice(inside[0].offset, inside[-1].stop)

    def view(self, vector: Tensor, name: str) -> Tensor:
        """The part of ``vector`` that belongs to parameter ``name``, shaped like it (a view, not a copy).

        Args:
            vector: a flat vector with this layout.
            name: a parameter's qualified name.

        Returns:
            A view of ``vector``.

        Raises:
            TypeError: ``vector`` is not a tensor.
            ValueError: ``vector`` is not 1-D of :attr:`numel` elements.
            KeyError: no parameter has that name.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from backbone import flat_layout
            >>> layout = flat_layout(nn.Linear(3, 2))
            >>> layout.view(torch.arange(8.0), "bias")
            tensor([6., 7.])
        """
        _check_vector(vector, self, "vector")
        entry = self[name]
        return vector[entry.offset : entry.stop].view(entry.shape)

    def index(self, i: int) -> tuple[str, int]:
        """The parameter that element ``i`` of a flat vector belongs to, and the element's offset inside it.

        Args:
            i: an index into a vector of :attr:`numel` elements; negative
                counts from the end, and a one-element integer tensor (what
                ``argmax()`` gives) is accepted.

        Returns:
            ``(name, offset)``: ``vector[i]`` is ``view(vector, name).reshape(-1)[offset]``.

        Raises:
            TypeError: ``i`` is not an integer.
            IndexError: ``i`` is out of range.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP, flat_layout
            >>> layout = flat_layout(MNISTMLP(4, 2, hidden_size=3))
            >>> layout.index(28)
            ('classifier.weight', 1)
            >>> fisher = torch.zeros(layout.numel)
            >>> fisher[16] = 1.0
            >>> layout.index(fisher.argmax())
            ('fc2.weight', 1)
        """
        if isinstance(i, Tensor) and i.device.type == "meta":
            raise TypeError("i must be an integer, got a tensor on the meta device, which holds no value")
        if isinstance(i, bool) or (
            isinstance(i, Tensor)
            and (i.numel() != 1 or i.is_floating_point() or i.is_complex() or i.dtype == torch.bool)
        ):
            raise TypeError(f"i must be an integer, got {_describe_index(i)}")
        try:
            position = operator.index(i.item() if isinstance(i, Tensor) else i)
        except TypeError:
            raise TypeError(f"i must be an integer, got {_describe_index(i)}") from None
        if not -self.numel <= position < self.numel:
            raise IndexError(f"index {position} is out of range for a flat vector of {self.numel} elements")
        position %= self.numel
        holding = [e for e in self.entries if e.numel]  # a parameter of no element shares the next one's offset
        entry = holding[bisect.bisect_right([e.offset for e in holding], position) - 1]
        return entry.name, position - entry.offset

    def split(self, vector: Tensor) -> dict[str, Tensor]:
        """Each parameter's part of a flat vector, shaped like it: ``{name: view}``, in the layout's order.

        Args:
            vector: a flat vector with this layout.

        Returns:
            A dict of views of ``vector`` (no copy), one per parameter.

        Raises:
            TypeError: ``vector`` is not a dense tensor.
            ValueError: ``vector`` is not 1-D of :attr:`numel` elements.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from backbone import flat_layout
            >>> parts = flat_layout(nn.Linear(3, 2)).split(torch.arange(8.0))
            >>> {name: tuple(t.shape) for name, t in parts.items()}
            {'weight': (2, 3), 'bias': (2,)}
        """
        _check_vector(vector, self, "vector")
        return {e.name: vector[e.offset : e.stop].view(e.shape) for e in self.entries}


def flat_layout(module: nn.Module, *, select: Selection = None) -> FlatLayout:
    """Describe the flat vectors of ``module``: each parameter's name, offset, shape and dtype.

    The order is that of :func:`~backbone.get_params` and
    :func:`~backbone.get_grads` (``named_parameters()``, each tied parameter
    once, frozen ones included); with ``select``, that of the vectors they
    give with the same selection.

    Args:
        module: any module.
        select: which parameters (see :func:`selected_parameters`); all by
            default.

    Returns:
        The layout.

    Raises:
        TypeError: ``module`` is not a module.

    Example:
        >>> from torch import nn
        >>> from backbone import flat_layout
        >>> [(e.name, e.offset, e.shape) for e in flat_layout(nn.Linear(3, 2))]
        [('weight', 0, (2, 3)), ('bias', 6, (2,))]
        >>> [(e.name, e.offset) for e in flat_layout(nn.Linear(3, 2), select=["bias"])]
        [('bias', 0)]
    """
    names, params = walk(module, select)
    entries, offset = [], 0
    for name, p in zip(names, params, strict=True):
        entries.append(LayoutEntry(name, offset, tuple(p.shape), p.dtype))
        offset += p.numel()
    return FlatLayout(tuple(entries))


def walk(module: object, select: Selection = None) -> tuple[list[str], list[nn.Parameter]]:
    """The names and parameters of ``module`` in flat-vector order, as they are now.

    This is the one walk behind every flat vector: :func:`~backbone.flat_layout` and
    every flat operation (:func:`~backbone.get_params` and the rest) call it,
    on every call, and keep nothing. It is ``module.named_parameters()``
    (depth first, each tied parameter once, frozen ones included), refusing
    parameters that a flat vector cannot hold.

    Args:
        module: the module to walk.
        select: which parameters to keep (see :func:`~backbone.selected_parameters`);
            all of them by default.

    Returns:
        The qualified names and the parameters, in the same order.

    Raises:
        TypeError: ``module`` is not a module, a submodule slot holds
            something else, or a parameter is not a plain dense tensor (not a
            tensor at all, sparse, quantized, nested, or sharded by FSDP).

    Example:
        >>> from torch import nn
        >>> from backbone.layout import walk
        >>> names, params = walk(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)))
        >>> names
        ['0.weight', '0.bias', '2.weight', '2.bias']
        >>> [tuple(p.shape) for p in params]
        [(2, 3), (2,), (1, 2), (1,)]
    """
    names, params, _, _ = walk_selected_and_all(module, select)
    return names, params


def walk_selected_and_all(
    module: object, select: Selection = None
) -> tuple[list[str], list[nn.Parameter], list[str], list[nn.Parameter]]:
    """What :func:`walk` gives, then every parameter's name and the parameter, from the same one walk.

    For the operations that must look at the parameters a selection leaves
    out too (an ``out=`` vector may overlap none of the model's tensors).
    Without a selection the two pairs are the same lists.

    Example:
        >>> from torch import nn
        >>> from backbone.layout import walk_selected_and_all
        >>> names, _, all_names, _ = walk_selected_and_all(nn.Linear(3, 2), ["bias"])
        >>> names, all_names
        (['bias'], ['weight', 'bias'])
    """
    module = check_module(module)
    found = _walk_slots(module)
    names, params = found if found is not None else _walk_named(module)
    for name, p in zip(names, params, strict=True):
        if not isinstance(p, Tensor):
            raise TypeError(f"parameter {name!r} must be a tensor, got {type(p).__name__}")
        if _sharded(p):
            raise TypeError(
                f"parameter {name!r} is sharded by FSDP ({type(p).__name__}), so each rank holds only part "
                "of it; flat vectors of a sharded model are not supported: use DistributedDataParallel, "
                "or gather the full parameters first"
            )
    if any(map(_is_quantized, params)) or any(map(_is_nested, params)):
        name, p = next((n, p) for n, p in zip(names, params, strict=True) if p.is_quantized or p.is_nested)
        raise TypeError(
            f"parameter {name!r} must be a plain dense tensor, got a {'quantized' if p.is_quantized else 'nested'} "
            "one; flat vectors cover plain dense parameters only"
        )
    if any(layout is not torch.strided for layout in set(map(_layout, params))):
        name, p = next((n, p) for n, p in zip(names, params, strict=True) if p.layout is not torch.strided)
        raise TypeError(
            f"parameter {name!r} must be a dense (strided) tensor, got layout {p.layout}; "
            "flat vectors cover dense parameters only"
        )
    if select is None or (isinstance(select, str) and select == "all"):
        return names, params, names, params
    keep = _keep(module, names, params, select)
    if not any(keep):
        raise ValueError(
            f"select={_describe(select)} picks no parameter of {type(module).__name__}; "
            "expected a selection of at least one parameter"
        )
    return (
        [n for n, k in zip(names, keep, strict=True) if k],
        [p for p, k in zip(params, keep, strict=True) if k],
        names,
        params,
    )


_layout = operator.attrgetter("layout")
_is_quantized = operator.attrgetter("is_quantized")
_is_nested = operator.attrgetter("is_nested")


def _walk_named(module: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """``named_parameters()`` as the module's class defines it."""
    names, params = [], []
    for name, p in module.named_parameters():
        names.append(name)
        params.append(p)
    return names, params


def _walk_slots(module: nn.Module) -> tuple[list[str], list[nn.Parameter]] | None:
    """What ``nn.Module.named_parameters()`` gives, read straight from the modules' slots; None where a class
    redefines the walk.

    torch's walk nests a generator per module and builds every module's
    prefix as it goes, which costs more than the copy of a small parameter.
    This is the same walk as a plain loop, with the same memo sets (a
    module or parameter already seen is skipped), valid only while every
    method it stands for is torch's own, on the class and on the instance:
    the root's ``named_parameters`` and ``_named_members``, and each
    visited module's ``named_modules``. Otherwise the module's own
    ``named_parameters()`` is used.
    """
    root = type(module)
    if (
        root.__getattribute__ is not _GETATTRIBUTE
        or root.named_parameters is not _NAMED_PARAMETERS
        or root._named_members is not _NAMED_MEMBERS
        or "named_parameters" in vars(module)
        or "_named_members" in vars(module)
    ):
        return None
    names: list[str] = []
    params: list[nn.Parameter] = []
    seen_modules: set[nn.Module] = set()
    seen_params: set[int] = set()  # ids: a tensor's __hash__ is a Python call
    # Depth first with a stack rather than recursion, so that no nesting is
    # too deep; a module is looked at when it is taken off the stack, which
    # visits them in the order the recursive walk does.
    stack = [(module, "")]
    plain_kinds: set[type] = set()  # classes already found to be modules that walk as torch's do
    while stack:
        m, prefix = stack.pop()
        kind = type(m)
        if kind not in plain_kinds:
            if not isinstance(m, nn.Module):
                raise TypeError(f"submodule {prefix!r} must be a torch.nn.Module, got {kind.__name__}")
            if kind.named_modules is not _NAMED_MODULES or kind.__getattribute__ is not _GETATTRIBUTE:
                return None
            plain_kinds.add(kind)
        if "named_modules" in vars(m):
            return None
        if m in seen_modules:
            continue
        seen_modules.add(m)
        dot = prefix + "." if prefix else ""
        for key, p in m._parameters.items():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                names.append(dot + key)
                params.append(p)
        for key, child in reversed(list(m._modules.items())):
            if child is not None:
                stack.append((child, dot + key))
    return names, params


_NAMED_PARAMETERS = nn.Module.named_parameters
_NAMED_MEMBERS = nn.Module._named_members
_NAMED_MODULES = nn.Module.named_modules
_GETATTRIBUTE = nn.Module.__getattribute__


def _sharded(p: Tensor) -> bool:
    # FSDP's fully_shard makes parameters DTensors; the older
    # FullyShardedDataParallel flattens them into FlatParameters.
    return type(p).__name__ in ("DTensor", "FlatParameter") or bool(getattr(p, "_is_flat_param", False))


def _describe_index(i: object) -> str:
    if isinstance(i, Tensor):
        return f"a tensor of {i.numel()} elements of dtype {i.dtype}"
    return type(i).__name__


def _check_vector(vector: object, layout: FlatLayout, name: str) -> Tensor:
    if not isinstance(vector, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {vector.layout}")
    if vector.dim() != 1 or vector.numel() != layout.numel:
        raise ValueError(
            f"{name} must be a 1-D tensor of {layout.numel} elements (the old layout), got shape {tuple(vector.shape)}"
        )
    return vector


def carry_vector(
    vector: Tensor, old: FlatLayout, new: FlatLayout, *, fill: float = 0.0, drop_removed: bool = False
) -> Tensor:
    """Move a flat vector laid out by ``old`` to the layout ``new``.

    Parameters are matched by name. A parameter in both layouts keeps its
    values: when it has grown (a classifier with more classes), the old values
    fill the leading block of the new shape (the old rows of a weight, the old
    entries of a bias) and the new elements get ``fill``. A parameter only in
    ``new`` is all ``fill``. A parameter only in ``old`` is refused, since its
    values would be lost, unless ``drop_removed``.

    With it, an EWC anchor (``fill=0`` and an importance of 0, so the new units
    are free), an SI importance or an A-GEM reference gradient (``fill=0``)
    stay valid across :meth:`~backbone.MammothBackbone.grow_classifier`.

    Args:
        vector: a 1-D tensor laid out by ``old``.
        old: the layout ``vector`` has.
        new: the layout to move it to.
        fill: the value of elements that ``old`` did not have.
        drop_removed: allow parameters of ``old`` that ``new`` does not have.

    Returns:
        A new 1-D tensor laid out by ``new``, in ``vector``'s dtype and device.

    Raises:
        TypeError: ``vector`` is not a tensor, or a layout is not a
            :class:`FlatLayout`.
        ValueError: ``vector`` does not have ``old``'s length; a parameter
            shrank, changed its number of dimensions, or was removed without
            ``drop_removed``.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, carry_vector, flat_layout
        >>> net = MNISTMLP(4, 2, hidden_size=3)
        >>> old = flat_layout(net)
        >>> anchor = net.get_params().detach()
        >>> net.grow_classifier(5)
        >>> carried = carry_vector(anchor, old, flat_layout(net))
        >>> carried.shape, torch.equal(carried[:27], anchor[:27])
        (torch.Size([47]), True)
        >>> torch.equal(flat_layout(net).view(carried, "classifier.bias")[:2], anchor[-2:])
        True
    """
    for name, layout in (("old", old), ("new", new)):
        if not isinstance(layout, FlatLayout):
            raise TypeError(f"{name} must be a FlatLayout (from flat_layout(module)), got {type(layout).__name__}")
    vector = _check_vector(vector, old, "vector")
    before = {entry.name: entry for entry in old}
    removed = [entry.name for entry in old if entry.name not in new]
    if removed and not drop_removed:
        raise ValueError(
            f"the new layout has no parameter {removed[0]!r}, so its values would be lost; "
            "pass drop_removed=True to drop them"
        )
    for entry in new:
        was = before.get(entry.name)
        if was is None:
            continue
        if len(was.shape) != len(entry.shape) or any(n < o for n, o in zip(entry.shape, was.shape, strict=True)):
            raise ValueError(
                f"parameter {entry.name!r} went from shape {was.shape} to {entry.shape}; only growing along "
                "existing dimensions can be carried"
            )
    out = torch.full((new.numel,), fill, dtype=vector.dtype, device=vector.device)
    for entry in new:
        was = before.get(entry.name)
        if was is None:
            continue
        target = out[entry.offset : entry.stop].view(entry.shape)
        block = tuple(slice(0, size) for size in was.shape)
        target[block] = vector[was.offset : was.stop].view(was.shape)
    return out


# --- selections -----------------------------------------------------------------


#: The selections that are spelled as a string.
SELECTIONS = ("all", "trainable", "no_classifier")

Selection = str | Callable[[str, nn.Parameter], bool] | Iterable[str] | FlatLayout | None
"""What ``select=`` accepts: a name in :data:`SELECTIONS`, ``None`` (all), a predicate, names or a layout."""


def selected_parameters(module: nn.Module, select: Selection = None) -> list[tuple[str, nn.Parameter]]:
    """The parameters of ``module`` that ``select`` picks, with their names, in flat-vector order.

    Args:
        module: any module.
        select: ``None`` or ``"all"``, ``"trainable"``, ``"no_classifier"``,
            a predicate ``(name, parameter) -> bool``, an iterable of
            parameter names, or a :class:`~backbone.FlatLayout`.

    Returns:
        ``(name, parameter)`` pairs, as ``named_parameters()`` orders them
        (each tied parameter once, under its first name).

    Raises:
        TypeError: ``module`` is not a module; ``select`` is of none of the
            accepted kinds, a predicate returns something other than a bool,
            or ``"no_classifier"`` is asked of a module without a classifier.
        ValueError: ``select`` is an unknown string or names a parameter
            the module does not have (the message lists close matches); a
            layout no longer matches the module; or an explicit selection
            picks no parameter.

    Example:
        >>> from backbone import MNISTMLP, selected_parameters
        >>> net = MNISTMLP(4, 3, hidden_size=5)
        >>> [name for name, _ in selected_parameters(net, "no_classifier")]
        ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
        >>> _ = net.fc1.requires_grad_(False)
        >>> [name for name, _ in selected_parameters(net, "trainable")]
        ['fc2.weight', 'fc2.bias', 'classifier.weight', 'classifier.bias']
        >>> [name for name, _ in selected_parameters(net, ["classifier.bias"])]
        ['classifier.bias']
        >>> selected_parameters(net, ["classifier.bais"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: select names 'classifier.bais', which MNISTMLP has no parameter of; did you mean ...?
    """
    return list(zip(*walk(module, select), strict=True))


def _keep(module: nn.Module, names: list[str], params: list[nn.Parameter], select: object) -> list[bool]:
    if isinstance(select, str):
        if select == "trainable":
            return [p.requires_grad for p in params]
        if select == "no_classifier":
            classifier = {id(p) for p in _classifier(module).parameters()}
            return [id(p) not in classifier for p in params]
        raise ValueError(
            f"select must be one of {', '.join(map(repr, SELECTIONS))}, a predicate, parameter names or a "
            f"FlatLayout, got {select!r}"
        )
    if isinstance(select, FlatLayout):
        return _keep_layout(module, names, params, select)
    if callable(select):
        keep = []
        for name, p in zip(names, params, strict=True):
            answer = select(name, p)
            if not isinstance(answer, bool):
                raise TypeError(
                    f"select's predicate must return a bool, got {type(answer).__name__} for parameter {name!r}"
                )
            keep.append(answer)
        return keep
    if isinstance(select, Iterable) and not isinstance(select, (bytes, dict)):
        wanted = list(select)
        if not all(isinstance(name, str) for name in wanted):
            bad = next(name for name in wanted if not isinstance(name, str))
            raise TypeError(f"select's parameter names must be strings, got {type(bad).__name__}")
        ids = _ids_by_name(module)
        for name in wanted:
            if name not in ids:
                close = difflib.get_close_matches(name, list(ids), n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"select names {name!r}, which {type(module).__name__} has no parameter of{hint}")
        chosen = {ids[name] for name in wanted}
        return [id(p) in chosen for p in params]
    raise TypeError(
        f"select must be one of {', '.join(map(repr, SELECTIONS))}, None, a predicate, parameter names or a "
        f"FlatLayout, got {type(select).__name__}"
    )


def _keep_layout(module: nn.Module, names: list[str], params: list[nn.Parameter], layout: FlatLayout) -> list[bool]:
    """The parameters a layout covers, refused unless each is still there as the layout describes it."""
    index = {name: i for i, name in enumerate(names)}
    positions = []
    for entry in layout:
        i = index.get(entry.name)
        if i is None:
            raise ValueError(
                f"select's layout covers {entry.name!r}, which {type(module).__name__} no longer has; "
                "expected a layout of this module as it is now"
            )
        p = params[i]
        if tuple(p.shape) != entry.shape or p.dtype != entry.dtype:
            raise ValueError(
                f"select's layout has {entry.name!r} as {entry.shape} {entry.dtype}, but it is now "
                f"{tuple(p.shape)} {p.dtype}; take a new layout (and carry kept vectors with carry_vector)"
            )
        positions.append(i)
    if positions != sorted(positions):
        raise ValueError("select's layout orders the parameters otherwise than this module does; expected its layout")
    chosen = set(positions)
    return [i in chosen for i in range(len(params))]


def _ids_by_name(module: nn.Module) -> dict[str, int]:
    """Every name a parameter answers to (tied ones have several), mapped to the parameter's identity.

    Read from the modules' slots, as the walk reads them, so that a class
    whose ``named_parameters`` takes fewer arguments than torch's still works.
    """
    ids = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for attr, p in sub._parameters.items():
            if p is not None:
                ids[f"{prefix}.{attr}" if prefix else attr] = id(p)
    return ids


def _classifier(module: nn.Module) -> nn.Module:
    get = getattr(module, "get_classifier", None)
    classifier: object = None
    if callable(get):
        try:
            classifier = get()
        except (NotImplementedError, AttributeError):
            classifier = None
    else:
        classifier = getattr(module, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise TypeError(
            f"select='no_classifier' needs a classifier, but {type(module).__name__} has none "
            "(expected get_classifier() or a classifier attribute that is a module)"
        )
    return classifier


def _describe(select: object) -> str:
    if isinstance(select, (str, list, tuple)):
        return repr(select)
    return f"<{type(select).__name__}>"
