"""Growing parameters by rows, and the optimizer state that goes with them: shared by every growable head."""

from __future__ import annotations

from typing import Any

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
        if param.grad is not None:
            param.grad = grow_rows(param.grad, fresh.shape[0])
        if optimizer is not None:
            grow_state(optimizer, param, old, fresh.shape[0])


def group_holding(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], what: str) -> dict[str, Any]:
    """The settings of the optimizer's param group holding the last of ``params``, for new parameters to join.

    Raises:
        ValueError: no group holds any of ``params``.
    """
    ids = {id(p) for p in params}
    for group in reversed(optimizer.param_groups):
        if any(id(p) in ids for p in group["params"]):
            return {k: v for k, v in group.items() if k != "params"}
    raise ValueError(
        f"the optimizer holds none of the {what}'s parameters, so the new ones cannot join it; "
        "grow without optimizer= or pass the optimizer that trains the classifier"
    )
