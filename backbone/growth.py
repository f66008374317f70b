"""Class-incremental growth: a linear classifier that gains output units, and logits of the seen classes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_int, check_module, check_num_classes

__all__ = ["grow_classifier", "mask_unseen"]


def grow_classifier(net: nn.Module, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Give the linear classifier of ``net`` ``num_classes`` output units, keeping the old ones bit for bit.

    The old units' weights and biases are the same bits after the growth, so
    the old logits are unchanged (up to the order in which the matrix multiply
    sums, which a BLAS may pick by the output width: at most a few ulps).

    The classifier is ``net.get_classifier()`` (``net.classifier`` for a
    module without it), and it must be a :class:`torch.nn.Linear`. Its weight
    and bias keep their Parameter objects and are resized in place: the old
    rows and biases are copied unchanged, the new ones are initialised as a
    freshly made classifier of the grown size would be (the backbone's
    ``init_classifier`` when it has one, else torch's default for
    :class:`~torch.nn.Linear`), in the same dtype and device. Existing
    gradients grow with zeros for the new units. Optimizers, hooks and
    anything else that holds the Parameter objects keep working.

    Pass ``optimizer`` to carry its per-parameter state across: every state
    tensor shaped like the old weight or bias (Adam's and AdamW's moments,
    SGD's momentum buffer, ...) grows with zeros for the new units; scalars
    such as Adam's ``step`` are kept. With torch's for-loop and ``foreach``
    implementations the old units then step exactly as they would have
    without the growth; with ``fused=True`` kernels, which vectorise over a
    tensor's length, they may differ in the last bit. An optimizer whose
    state for the classifier holds any other tensor (Adafactor's factored
    second moments, statistics over several units at once) is refused before
    anything changes.

    Args:
        net: the backbone (or any module with a linear classifier).
        num_classes: the new number of classes: at least the current one
            (equal changes nothing).
        optimizer: an optimizer over ``net``'s parameters whose state to
            carry.

    Raises:
        TypeError: the classifier is not a :class:`torch.nn.Linear`,
            ``num_classes`` is not an int, ``optimizer`` is not an
            optimizer, or its state for the classifier cannot be carried.
        ValueError: ``num_classes`` is smaller than the current number
            (shrinking would drop trained units).

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, grow_classifier
        >>> net = MNISTMLP(4, 2, hidden_size=3)
        >>> x = torch.randn(5, 4)
        >>> before = net(x)
        >>> weight = net.classifier.weight
        >>> grow_classifier(net, 5)
        >>> net(x).shape, torch.allclose(net(x)[:, :2], before), net.classifier.weight is weight
        (torch.Size([5, 5]), True, True)
        >>> grow_classifier(net, 3)
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be at least the current 5 (growing only), got 3
    """
    net = check_module(net)
    classifier = _classifier(net)
    if not isinstance(classifier, nn.Linear):
        raise TypeError(
            f"grow_classifier needs a torch.nn.Linear classifier, got {type(classifier).__name__}; "
            "grow a custom head yourself, or replace it with reset_classifier"
        )
    computed = [name for name in ("weight", "bias") if getattr(classifier, name) is not None]
    computed = [name for name in computed if name not in classifier._parameters]
    if computed:
        raise TypeError(
            f"grow_classifier needs the classifier's {computed[0]} to be a parameter, got one computed by a "
            "parametrization or hook; grow the tensors it is computed from yourself"
        )
    old = classifier.out_features
    check_num_classes(num_classes, at_least=old)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if num_classes == old:
        return
    if optimizer is not None:
        for name in ("weight", "bias"):
            param = getattr(classifier, name)
            if param is not None:
                _check_state(optimizer, param, name)
    fresh = nn.Linear(
        classifier.in_features,
        num_classes,
        bias=classifier.bias is not None,
        device=classifier.weight.device,
        dtype=classifier.weight.dtype,
    )
    init = getattr(net, "init_classifier", None)
    if callable(init):
        init(fresh)
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(classifier, name)
            if param is None:
                continue
            grown = getattr(fresh, name).detach().clone()
            grown[:old] = param
            param.data = grown
            if param.grad is not None:
                param.grad = _grow_rows(param.grad, num_classes)
            if optimizer is not None:
                _grow_state(optimizer, param, old, num_classes)
    classifier.out_features = num_classes


def _classifier(net: nn.Module) -> nn.Module | None:
    get = getattr(net, "get_classifier", None)
    if callable(get):
        try:
            return get()  # type: ignore[no-any-return]
        except NotImplementedError:
            return None
    return getattr(net, "classifier", None)


def _grow_rows(t: Tensor, rows: int) -> Tensor:
    grown = t.new_zeros((rows, *t.shape[1:]))
    grown[: t.shape[0]] = t
    return grown


def _check_state(optimizer: torch.optim.Optimizer, param: Tensor, name: str) -> None:
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


def _grow_state(optimizer: torch.optim.Optimizer, param: Tensor, old: int, new: int) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    old_shape = (old, *param.shape[1:])
    for key, value in list(state.items()):
        if isinstance(value, Tensor) and tuple(value.shape) == old_shape:
            state[key] = _grow_rows(value, new)


def mask_unseen(logits: Tensor, num_seen: int) -> Tensor:
    """Logits of the classes seen so far: the first ``num_seen`` columns, the rest set to ``-inf``.

    Class-incremental evaluation and training rank only the classes seen so
    far. With :func:`grow_classifier` the head only ever has those, so the
    logits already are; a head made for every class up front needs this mask.
    ``argmax``, ``softmax`` and ``cross_entropy`` then ignore the unseen
    classes. The result is a new tensor, differentiable like ``logits``.

    Args:
        logits: ``[B, C]`` logits.
        num_seen: how many classes, counted from the first, have been seen.

    Returns:
        ``[B, C]`` logits with columns ``num_seen`` and after at ``-inf``.

    Raises:
        TypeError: ``logits`` is not a tensor or ``num_seen`` not an int.
        ValueError: ``logits`` is not 2-D, or ``num_seen`` is not between 1
            and ``C``.

    Example:
        >>> import torch
        >>> from backbone import mask_unseen
        >>> mask_unseen(torch.tensor([[0.5, 2.0, 9.0]]), 2)
        tensor([[0.5000, 2.0000,   -inf]])
        >>> mask_unseen(torch.tensor([[0.5, 2.0, 9.0]]), 2).argmax(1)
        tensor([1])
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    num_seen = check_int(num_seen, "num_seen")
    if not 1 <= num_seen <= logits.shape[1]:
        raise ValueError(f"num_seen must be from 1 to the {logits.shape[1]} classes of the logits, got {num_seen}")
    seen = torch.arange(logits.shape[1], device=logits.device) < num_seen
    return logits.masked_fill(~seen, float("-inf"))
