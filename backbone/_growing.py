"""Growing parameters by rows, and the optimizer state that goes with them: shared by every growable head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def grow_rows(t: Tensor, rows: int) -> Tensor:
    grown = t.new_zeros((rows, *t.shape[1:]))
    grown[: t.shape[0]] = t
    return grown


def check_state(optimizer: torch.optim.Optimizer, param: Tensor, name: str) -> None:
    """Refuse an optimizer whose state for ``param`` holds a tensor that is neither a scalar nor shaped like it.

    Such a tensor is a statistic over several units at once (Adafactor's
    factored row and column second moments): it cannot grow with zeros for
    the new units without changing how the old ones step.
    """
    for key, value in (optimizer.state.get(param) or {}).items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
            raise TypeError(
                f"{type(optimizer).__name__} keeps state {key!r} of shape {tuple(value.shape)} for the classifier's "
                f"{name} of shape {tuple(param.shape)}; only state shaped like the parameter (or scalars) can be "
                "carried across growth: grow without optimizer= and build a new optimizer"
            )


def grow_state(optimizer: torch.optim.Optimizer, param: Tensor, old: int, new: int) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    old_shape = (old, *param.shape[1:])
    for key, value in list(state.items()):
        if isinstance(value, Tensor) and tuple(value.shape) == old_shape:
            state[key] = grow_rows(value, new)


def grow_param(param: nn.Parameter, fresh: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Resize ``param`` in place to ``fresh``'s rows: the old rows copied bit for bit, the rest from ``fresh``.

    The gradient grows with zero rows and the optimizer's state shaped like
    the parameter grows with zero rows; the Parameter object stays.
    """
    old = param.shape[0]
    with torch.no_grad():
        grown = fresh.detach().clone()
        grown[:old] = param
        # While a graph built before the growth is alive, torch keeps handing out the parameter's gradient
        # accumulator, which knows the old shape, and the next backward fails. Torch drops the accumulator when
        # the data's dtype changes, so the data passes through another dtype on the way in.
        param.data = grown.to(torch.float64 if grown.dtype != torch.float64 else torch.float32)
        param.data = grown
        # Autocast keeps a low-precision copy of each weight for its region, keyed to the Parameter object.
        torch.clear_autocast_cache()
        if param.grad is not None:
            param.grad = grow_rows(param.grad, fresh.shape[0])
        if optimizer is not None:
            grow_state(optimizer, param, old, fresh.shape[0])


def check_optimizer_for(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], what: str) -> None:
    """Refuse, before any change, an optimizer that cannot be carried across the growth of ``params``.

    Raises:
        TypeError: LBFGS, whose state is one flat history over all its
            parameters.
        ValueError: the optimizer trains none of ``params`` (it belongs to
            another model, or the head is not in it).
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError(
            "LBFGS keeps one flat history over all its parameters, which cannot grow with the classifier; "
            "grow without optimizer= and build a new LBFGS"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in params):
        raise ValueError(
            f"the optimizer holds none of the {what}'s parameters, so there is nothing of it to carry; "
            "grow without optimizer= or pass the optimizer that trains the classifier"
        )


def join_groups(optimizer: torch.optim.Optimizer, pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> None:
    """Add each new parameter to the optimizer with the settings of the group that trains its counterpart.

    ``pairs`` holds ``(new, old)``: a new head's weight and the last head's
    weight, say. New parameters whose counterparts share a group join one new
    group with a copy of its settings (tensors cloned, so that a scheduler
    that changes one group's rate in place leaves the other alone). A
    counterpart the optimizer does not hold takes the group of any that it
    does.
    """

    def group_of(p: nn.Parameter) -> int | None:
        return next((i for i, g in enumerate(optimizer.param_groups) if any(q is p for q in g["params"])), None)

    found = [group_of(old) for _, old in pairs]
    fallback = next((i for i in found if i is not None), None)
    by_group: dict[int, list[nn.Parameter]] = {}
    for (new, _), index in zip(pairs, found, strict=True):
        chosen = index if index is not None else fallback
        if chosen is None:
            raise ValueError("the optimizer holds none of the head's parameters, so the new ones cannot join it")
        by_group.setdefault(chosen, []).append(new)
    for index, params in by_group.items():
        settings = {
            key: value.clone() if isinstance(value, Tensor) else value
            for key, value in optimizer.param_groups[index].items()
            if key != "params"
        }
        optimizer.add_param_group({"params": params, **settings})
