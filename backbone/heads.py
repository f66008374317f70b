"""Classifier heads for class- and task-incremental learning, each grown by :func:`~backbone.grow_classifier`.

* :class:`CosineClassifier`: ``scale * cos(features, w_c)`` with a learned
  scale (LUCIR, PODNet with one proxy per class). Growth adds rows to its one
  weight, as for :class:`torch.nn.Linear`.
* :class:`SplitCosineClassifier`: the same logits, with one weight per group
  of classes (a group per task), so that a method can treat old and new
  classes apart (LUCIR's ``fc1``/``fc2``: freeze, or give another learning
  rate to, the old groups). Growth adds a group.
* :class:`MultiHeadClassifier`: one linear head per task (FACIL's
  ``LLL_Net.heads``), outputs concatenated in class order, so that ``'out'``
  keeps its meaning; :meth:`~backbone.MultiHeadClassifier.mask` gives task-incremental
  logits in one call. Growth adds a head.

Every head is an ordinary module to put in a backbone's ``classifier`` slot.
Growth keeps the old units' parameters bit for bit (the same Parameter
objects), and carries an optimizer: rows added to an existing parameter get
zero state; a new group's or head's parameters join the optimizer in a new
param group with the settings of the group that trains the last one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._checks import check_bool, check_int
from ._growing import check_optimizer_for, check_state, grow_param, join_groups

__all__ = ["CosineClassifier", "MultiHeadClassifier", "SplitCosineClassifier"]


def _check_sizes(in_features: object, sizes: object, what: str) -> tuple[int, list[int]]:
    if check_int(in_features, "in_features") < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features}")
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        sizes = [sizes]
    if not isinstance(sizes, list | tuple) or not sizes:
        raise ValueError(f"{what} must be a positive int or a non-empty sequence of them, got {sizes!r}")
    checked = [check_int(s, f"each of {what}") for s in sizes]
    if any(s < 1 for s in checked):
        raise ValueError(f"{what} must all be positive, got {list(checked)}")
    return check_int(in_features, "in_features"), checked


def _cosine_rows(rows: int, in_features: int, like: Tensor | None = None) -> Tensor:
    """New class weights as LUCIR starts them: uniform in ``±1/sqrt(in_features)``."""
    bound = 1.0 / math.sqrt(in_features)
    if like is None:
        return torch.empty(rows, in_features).uniform_(-bound, bound)
    return torch.empty(rows, in_features, device=like.device, dtype=like.dtype).uniform_(-bound, bound)


def _cosine(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    return F.linear(F.normalize(x, dim=-1), F.normalize(weight, dim=-1)) * scale


def _scale(value: float, learn: bool, like: Tensor) -> Tensor:
    t = torch.full((1,), float(value), device=like.device, dtype=like.dtype)
    return nn.Parameter(t) if learn else t


def _check_scale(scale: object, learn_scale: object) -> float:
    check_bool("learn_scale", learn_scale)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(x, w_c)``: cosine similarity to one weight per class, times a learned scale.

    The weight starts uniform in ``±1/sqrt(in_features)`` and the scale at
    ``scale`` (1.0, as LUCIR); with ``learn_scale=False`` the scale is a
    buffer.

    Args:
        in_features: the feature width.
        out_features: the number of classes.
        scale: the scale's starting value.
        learn_scale: whether the scale is a parameter.

    Raises:
        ValueError: a size is not positive, or ``scale`` is not a positive
            finite number.

    Example:
        >>> import torch
        >>> from backbone import CosineClassifier
        >>> head = CosineClassifier(4, 3, scale=10.0)
        >>> logits = head(torch.randn(2, 4))
        >>> logits.shape, bool(logits.abs().max() <= 10.0)
        (torch.Size([2, 3]), True)
    """

    def __init__(self, in_features: int, out_features: int, *, scale: float = 1.0, learn_scale: bool = True) -> None:
        in_features, (out_features,) = _check_sizes(in_features, [out_features], "out_features")
        value = _check_scale(scale, learn_scale)
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(_cosine_rows(out_features, in_features))
        if learn_scale:
            self.scale = _scale(value, True, self.weight)
        else:
            self.register_buffer("scale", _scale(value, False, self.weight))

    @property
    def out_features(self) -> int:
        """The number of classes."""
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Return ``scale * cos(x, w_c)`` for every class ``c``: ``[B, out_features]``."""
        return _cosine(x, self.weight, self.scale)

    def grow_classes(
        self,
        num_classes: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        init: Callable[[nn.Linear], None] | None = None,
    ) -> None:
        """Add class weights (started as a fresh head's) in place; :func:`~backbone.grow_classifier` calls this.

        Args:
            num_classes: the new number of classes, at least the current.
            optimizer: an optimizer whose state for the weight grows with zeros.
            init: ignored (cosine weights start as :class:`CosineClassifier` does).

        Raises:
            ValueError: ``num_classes`` is smaller than the current number.
            TypeError: the optimizer's state cannot be carried.

        Example:
            >>> import torch
            >>> from backbone import CosineClassifier
            >>> head = CosineClassifier(4, 2)
            >>> x = torch.randn(3, 4)
            >>> before = head(x)
            >>> head.grow_classes(5)
            >>> head.out_features, torch.allclose(head(x)[:, :2], before)
            (5, True)
        """
        old = self.out_features
        if check_int(num_classes, "num_classes") < old:
            raise ValueError(f"num_classes must be at least the current {old} (growing only), got {num_classes}")
        if "weight" not in self._parameters:
            raise TypeError(
                "CosineClassifier can grow only a weight that is a parameter, got one computed by a "
                "parametrization or hook; grow the tensors it is computed from yourself"
            )
        if optimizer is not None:
            check_optimizer_for(optimizer, list(self.parameters()), "classifier")
            check_state(optimizer, self.weight, "weight")
        if num_classes > old:
            grow_param(self.weight, _cosine_rows(num_classes, self.in_features, self.weight), optimizer)

    def extra_repr(self) -> str:
        learned = isinstance(self.scale, nn.Parameter)
        return f"in_features={self.in_features}, out_features={self.out_features}, learn_scale={learned}"


class _Grouped(nn.Module):
    """What the grouped heads share: group sizes, class offsets, and growth by a new group."""

    in_features: int

    @property
    def group_sizes(self) -> list[int]:
        """The number of classes of each group (task), in class order."""
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        """The number of classes, over all groups."""
        return sum(self.group_sizes)

    @property
    def offsets(self) -> list[int]:
        """The first class of each group: group ``t`` starts at class ``offsets[t]``."""
        starts, total = [], 0
        for size in self.group_sizes:
            starts.append(total)
            total += size
        return starts

    def _add_group(
        self, size: int, init: Callable[[nn.Linear], None] | None
    ) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """Append a group of ``size`` classes; return each new parameter with its counterpart in the last group."""
        raise NotImplementedError

    def grow_classes(
        self,
        num_classes: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        init: Callable[[nn.Linear], None] | None = None,
    ) -> None:
        """Add one group (task) with the classes from the current number up to ``num_classes``.

        :func:`~backbone.grow_classifier` calls this. The old groups keep
        their Parameter objects and values; each new parameter joins
        ``optimizer`` (if given) in a new param group with a copy of the
        settings of the group that trains its counterpart in the last group
        (a new head's weight as the last head's weight, its bias as that
        bias), so that weights and biases with different weight decay keep
        it. LBFGS, whose state is one history over all parameters, is
        refused.

        Args:
            num_classes: the new number of classes, at least the current
                (equal adds nothing).
            optimizer: an optimizer the new parameters join.
            init: for :class:`MultiHeadClassifier`, how a new head's
                :class:`~torch.nn.Linear` starts (the backbone's
                ``init_classifier``); torch's default when None.

        Raises:
            TypeError: ``optimizer`` is an LBFGS.
            ValueError: ``num_classes`` is smaller than the current number,
                the head has no group, or ``optimizer`` trains none of the
                head's parameters.

        Example:
            >>> import torch
            >>> from backbone import MultiHeadClassifier
            >>> head = MultiHeadClassifier(4, [2])
            >>> optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
            >>> head.grow_classes(5, optimizer=optimizer)
            >>> head.group_sizes, len(optimizer.param_groups)
            ([2, 3], 2)
        """
        old = self.out_features
        if check_int(num_classes, "num_classes") < old:
            raise ValueError(f"num_classes must be at least the current {old} (growing only), got {num_classes}")
        if not self.group_sizes:
            raise ValueError(f"{type(self).__name__} has no group left to grow from; expected at least one")
        if num_classes == old:
            return
        if optimizer is not None:
            check_optimizer_for(optimizer, list(self.parameters()), "head")
        pairs = self._add_group(num_classes - old, init)
        if optimizer is not None:
            join_groups(optimizer, pairs)

    def groups_in(self, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[int]:
        """The group sizes a state dict of this kind of head holds (keys under ``prefix``).

        Args:
            state_dict: a state dict holding this head's entries.
            prefix: the head's key prefix in it (``'classifier.'``, say).

        Returns:
            The sizes, in group order.

        Raises:
            ValueError: the state dict holds no groups under ``prefix``.

        Example:
            >>> from backbone import SplitCosineClassifier
            >>> saved = SplitCosineClassifier(4, [3, 2, 2]).state_dict()
            >>> SplitCosineClassifier(4, [3]).groups_in(saved)
            [3, 2, 2]
        """
        sizes: dict[int, int] = {}
        for key, value in state_dict.items():
            rest = key[len(prefix) :].split(".") if key.startswith(prefix) else []
            # SplitCosine keeps "weights.{i}", MultiHead "heads.{i}.weight".
            in_group = len(rest) >= 2 and rest[0] == self._group_key and rest[1].isdigit()
            if in_group and rest[2:] in ([], ["weight"]):
                if not isinstance(value, Tensor) or value.dim() != 2:
                    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"the state dict's {key!r} must be a [classes, features] tensor, got {got}")
                sizes[int(rest[1])] = int(value.shape[0])
        if sorted(sizes) != list(range(len(sizes))) or not sizes:
            raise ValueError(f"the state dict holds no groups {prefix}{self._group_key}.0, .1, ... of this head")
        return [sizes[i] for i in range(len(sizes))]

    _group_key = ""


class SplitCosineClassifier(_Grouped):
    """A cosine classifier with one weight per group of classes: LUCIR's split head, one group per task.

    The logits are those of a :class:`CosineClassifier` over all groups'
    weights stacked in order, with one shared learned scale. The groups are
    separate parameters (``weights.0``, ``weights.1``, ...), so a method can
    freeze or slow down the old ones (LUCIR's ``fc1`` is every group but the
    last, ``fc2`` the last); :attr:`num_old` counts the classes before the
    last group.

    Args:
        in_features: the feature width.
        group_sizes: the classes of each starting group (an int for one).
        scale: the scale's starting value.
        learn_scale: whether the scale is a parameter.

    Raises:
        ValueError: a size is not positive, or ``scale`` is not a positive
            finite number.

    Example:
        >>> import torch
        >>> from backbone import SplitCosineClassifier
        >>> head = SplitCosineClassifier(4, [3, 2])
        >>> head(torch.randn(5, 4)).shape, head.group_sizes, head.num_old, head.offsets
        (torch.Size([5, 5]), [3, 2], 3, [0, 3])
    """

    _group_key = "weights"

    def __init__(
        self, in_features: int, group_sizes: int | list[int], *, scale: float = 1.0, learn_scale: bool = True
    ) -> None:
        in_features, sizes = _check_sizes(in_features, group_sizes, "group_sizes")
        value = _check_scale(scale, learn_scale)
        super().__init__()
        self.in_features = in_features
        self.weights = nn.ParameterList([nn.Parameter(_cosine_rows(n, in_features)) for n in sizes])
        if learn_scale:
            self.scale = _scale(value, True, self.weights[0])
        else:
            self.register_buffer("scale", _scale(value, False, self.weights[0]))

    @property
    def group_sizes(self) -> list[int]:
        """The number of classes of each group, in class order."""
        return [int(w.shape[0]) for w in self.weights]

    @property
    def num_old(self) -> int:
        """The classes of every group but the last."""
        return sum(self.group_sizes[:-1])

    def forward(self, x: Tensor) -> Tensor:
        """Return ``scale * cos(x, w_c)`` for every class, groups in order: ``[B, out_features]``."""
        return _cosine(x, torch.cat(list(self.weights)), self.scale)

    def _add_group(
        self, size: int, init: Callable[[nn.Linear], None] | None
    ) -> list[tuple[nn.Parameter, nn.Parameter]]:
        last = self.weights[-1]
        new = nn.Parameter(_cosine_rows(size, self.in_features, last))
        self.weights.append(new)
        return [(new, last)]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, group_sizes={self.group_sizes}"


class MultiHeadClassifier(_Grouped):
    """One linear head per task, outputs concatenated in class order: FACIL's ``heads``, Avalanche's multi-head.

    ``forward`` gives the logits of every class, head ``t`` giving classes
    ``offsets[t]`` onwards, so ``'out'`` keeps its meaning for
    class-incremental evaluation; :meth:`mask` keeps one task's logits for
    task-incremental training and evaluation.

    Args:
        in_features: the feature width.
        group_sizes: the classes of each starting task (an int for one).
        bias: whether the heads have a bias.

    Raises:
        ValueError: a size is not positive.

    Example:
        >>> import torch
        >>> from backbone import MultiHeadClassifier
        >>> head = MultiHeadClassifier(4, [2, 3])
        >>> head(torch.randn(1, 4)).shape, head.offsets, head.heads[1]
        (torch.Size([1, 5]), [0, 2], Linear(in_features=4, out_features=3, bias=True))
    """

    _group_key = "heads"

    def __init__(self, in_features: int, group_sizes: int | list[int], *, bias: bool = True) -> None:
        in_features, sizes = _check_sizes(in_features, group_sizes, "group_sizes")
        check_bool("bias", bias)
        super().__init__()
        self.in_features = in_features
        self.bias = bias
        self.heads = nn.ModuleList([nn.Linear(in_features, n, bias=bias) for n in sizes])

    @property
    def group_sizes(self) -> list[int]:
        """The number of classes of each task, in class order."""
        return [cast(nn.Linear, h).out_features for h in self.heads]

    def forward(self, x: Tensor) -> Tensor:
        """Return every head's logits, concatenated in class order: ``[B, out_features]``."""
        return torch.cat([head(x) for head in self.heads], dim=-1)

    def mask(self, logits: Tensor, task: int | Tensor) -> Tensor:
        """Keep the logits of ``task``'s classes and set the rest to ``-inf`` (task-incremental learning).

        Args:
            logits: ``[B, out_features]`` logits from this head.
            task: one task index for the batch, or a ``[B]`` integer tensor
                with each sample's task.

        Returns:
            A new ``[B, out_features]`` tensor; ``argmax``, ``softmax`` and
            ``cross_entropy`` then see only the task's classes.

        Raises:
            TypeError: ``logits`` or ``task`` of the wrong type.
            ValueError: a shape that does not fit, or a task out of range.

        Example:
            >>> import torch
            >>> from backbone import MultiHeadClassifier
            >>> head = MultiHeadClassifier(4, [2, 3])
            >>> head.mask(torch.zeros(2, 5), torch.tensor([0, 1]))
            tensor([[0., 0., -inf, -inf, -inf],
                    [-inf, -inf, 0., 0., 0.]])
        """
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point (-inf marks the other tasks), got {logits.dtype}")
        if logits.dim() != 2 or logits.shape[1] != self.out_features:
            raise ValueError(f"logits must be [B, {self.out_features}], got shape {tuple(logits.shape)}")
        tasks = len(self.heads)
        if isinstance(task, Tensor):
            if task.dtype in (torch.bool,) or task.is_floating_point() or task.is_complex():
                raise TypeError(f"task must hold integer task indices, got {task.dtype}")
            if task.shape != (logits.shape[0],):
                raise ValueError(f"task must be one index per sample, [{logits.shape[0]}], got {tuple(task.shape)}")
            if task.device.type == "meta":
                raise ValueError("task is on the meta device and holds no indices; expected a tensor with data")
            if task.numel() and (int(task.min()) < 0 or int(task.max()) >= tasks):
                raise ValueError(f"task indices must be from 0 to {tasks - 1}, got {task.tolist()}")
            task_ids = task.to(logits.device)
        else:
            index = check_int(task, "task")
            if not 0 <= index < tasks:
                raise ValueError(f"task must be from 0 to {tasks - 1}, got {index}")
            task_ids = torch.full((logits.shape[0],), index, device=logits.device)
        sizes = torch.tensor(self.group_sizes, device=logits.device)
        class_task = torch.repeat_interleave(torch.arange(tasks, device=logits.device), sizes)
        keep = class_task.unsqueeze(0) == task_ids.unsqueeze(1)
        return logits.masked_fill(~keep, float("-inf"))

    def _add_group(
        self, size: int, init: Callable[[nn.Linear], None] | None
    ) -> list[tuple[nn.Parameter, nn.Parameter]]:
        last = cast(nn.Linear, self.heads[-1])
        head = nn.Linear(self.in_features, size, bias=self.bias, device=last.weight.device, dtype=last.weight.dtype)
        if init is not None:
            init(head)
        self.heads.append(head)
        pairs = [(head.weight, last.weight)]
        if head.bias is not None and last.bias is not None:
            pairs.append((head.bias, last.bias))
        return cast(list[tuple[nn.Parameter, nn.Parameter]], pairs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, group_sizes={self.group_sizes}, bias={self.bias}"
