"""Which parameters a flat vector covers: all of them, the trainable ones, named ones, or all but the classifier.

A selection is given at the call, as the ``select`` argument, and resolved
against the module as it is at that call; nothing is remembered. The forms:

* ``None`` or ``"all"``: every parameter, frozen ones included (the
  default of every flat operation, as the documented contract has it);
* ``"trainable"``: the parameters whose ``requires_grad`` is set now;
* ``"no_classifier"``: every parameter but the classifier's (what Mammoth's
  ViT calls ``discard_classifier=True``); the classifier is
  ``module.get_classifier()``, or ``module.classifier`` for a module without
  that method;
* a predicate ``(name, parameter) -> bool``;
* an iterable of parameter names (a tied parameter answers to any of its
  names);
* a :class:`~backbone.FlatLayout`, taken earlier with the same selection: its
  parameters, which must still be there with the same shapes and dtypes.

The selected parameters keep the flat-vector order of
``named_parameters()``. An explicit selection that picks nothing is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from torch import nn

from ._checks import check_module
from .layout import FlatLayout, walk

__all__ = ["SELECTIONS", "Selection", "selected_parameters"]

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
    module = check_module(module)
    names, params = walk(module)
    if select is None or (isinstance(select, str) and select == "all"):
        return list(zip(names, params, strict=True))
    keep = _keep(module, names, params, select)
    picked = [(name, p) for name, p, k in zip(names, params, keep, strict=True) if k]
    if not picked:
        raise ValueError(
            f"select={_describe(select)} picks no parameter of {type(module).__name__}; "
            "expected a selection of at least one parameter"
        )
    return picked


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
    """Every name a parameter answers to (tied ones have several), mapped to the parameter's identity."""
    return {name: id(p) for name, p in module.named_parameters(remove_duplicate=False)}


def _classifier(module: nn.Module) -> nn.Module:
    get = getattr(module, "get_classifier", None)
    classifier: object = None
    if callable(get):
        try:
            classifier = get()
        except NotImplementedError:
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
