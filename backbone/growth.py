"""Class-incremental growth: a linear classifier that gains output units, and logits of the seen classes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._checks import check_int, check_module, check_num_classes
from ._growing import check_optimizer_for, check_state, grow_param
from .wrappers import unwrap

__all__ = ["grow_classifier", "grow_to_fit", "mask_unseen"]


def grow_classifier(net: nn.Module, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Give the classifier of ``net`` ``num_classes`` output units, keeping the old ones bit for bit.

    The old units' weights and biases are the same bits after the growth, so
    the old logits are unchanged (up to the order in which the matrix multiply
    sums, which a BLAS may pick by the output width: at most a few ulps).

    The classifier is ``net.get_classifier()`` (``net.classifier`` for a
    module without it): a :class:`torch.nn.Linear`, or any head with a
    ``grow_classes(num_classes, optimizer=..., init=...)`` method (the
    package's :class:`~backbone.CosineClassifier`,
    :class:`~backbone.SplitCosineClassifier` and
    :class:`~backbone.MultiHeadClassifier` grow that way). A linear classifier's weight
    and bias keep their Parameter objects and are resized in place: the old
    rows and biases are copied unchanged, the new ones are initialised as a
    freshly made classifier of the grown size would be (the backbone's
    ``init_classifier`` when it has one, else torch's default for
    :class:`~torch.nn.Linear`), in the same dtype and device. Existing
    gradients grow with zeros for the new units. Optimizers, hooks and
    anything else that holds the Parameter objects keep working.

    A graph built before the growth must not be back-propagated after it:
    its gradients have the old shape. (A new forward and backward are fine,
    even while such a graph is still alive.)

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
        TypeError: the classifier is neither a :class:`torch.nn.Linear`
            nor a head with ``grow_classes``, ``num_classes`` is not an int, ``optimizer`` is not an
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
    net = unwrap(check_module(net))
    classifier = _classifier(net)
    grow = getattr(classifier, "grow_classes", None)
    if not isinstance(classifier, nn.Linear) and callable(grow):
        old = getattr(classifier, "out_features", None)
        check_num_classes(num_classes, at_least=old if isinstance(old, int) else 0)
        _check_optimizer(optimizer)
        init = getattr(net, "init_classifier", None)
        grow(num_classes, optimizer=optimizer, init=init if callable(init) else None)
        return
    if not isinstance(classifier, nn.Linear):
        raise TypeError(
            f"grow_classifier needs a torch.nn.Linear classifier or one with a grow_classes method, got "
            f"{type(classifier).__name__}; grow a custom head yourself, or replace it with reset_classifier"
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
    _check_optimizer(optimizer)
    if num_classes == old:
        return
    params = {name: getattr(classifier, name) for name in ("weight", "bias") if getattr(classifier, name) is not None}
    if optimizer is not None:
        check_optimizer_for(optimizer, list(params.values()), "classifier")
        for name, param in params.items():
            check_state(optimizer, param, name)
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
    for name, param in params.items():
        grow_param(param, getattr(fresh, name), optimizer)
    classifier.out_features = num_classes


def grow_to_fit(net: nn.Module, state_dict: Mapping[str, Tensor]) -> int:
    """Grow ``net``'s classifier to the classes a state dict saved after growth holds; then it loads.

    A checkpoint saved after :func:`grow_classifier` has more classes than a
    freshly built backbone. This reads the classifier's size from the state
    dict and grows the backbone to it, as the training did: a
    :class:`~torch.nn.Linear` or :class:`~backbone.CosineClassifier` to the
    saved number of rows, a :class:`~backbone.SplitCosineClassifier` or
    :class:`~backbone.MultiHeadClassifier` one group at a time to the saved
    group sizes. ``net.load_state_dict(state_dict)`` then works. Only the
    classifier is touched; the state dict is not loaded.

    Args:
        net: the backbone (or any module with a classifier).
        state_dict: the state dict saved after growth.

    Returns:
        The number of classes after the growth.

    Raises:
        TypeError: ``state_dict`` is not a mapping, or the classifier cannot
            grow.
        ValueError: the state dict has no entries for the classifier, fewer
            classes than ``net`` has, or groups that do not extend ``net``'s;
            nothing is changed then.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, grow_to_fit
        >>> trained = MNISTMLP(4, 2, hidden_size=3)
        >>> trained.grow_classifier(5)
        >>> fresh = MNISTMLP(4, 2, hidden_size=3)
        >>> grow_to_fit(fresh, trained.state_dict())
        5
        >>> fresh.load_state_dict(trained.state_dict())
        <All keys matched successfully>
    """
    net = unwrap(check_module(net))
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    classifier = _classifier(net)
    prefix = next((f"{name}." for name, module in net.named_modules() if module is classifier and name), None)
    if classifier is None or prefix is None:
        raise TypeError(f"grow_to_fit needs a module with a classifier, got {type(net).__name__}")
    # The state dict may be a wrapper's (DataParallel, torch.compile) around the same module.
    prefix = next(
        (
            f"{wrap}{prefix}"
            for wrap in ("", "module.", "_orig_mod.")
            if any(k.startswith(wrap + prefix) for k in state_dict)
        ),
        prefix,
    )
    groups = getattr(classifier, "groups_in", None)
    if callable(groups):
        saved, now = groups(state_dict, prefix), list(cast(Any, classifier).group_sizes)
        if saved[: len(now)] != now:
            raise ValueError(f"the state dict's groups {saved} do not extend the classifier's groups {now}")
        targets = [sum(saved[: i + 1]) for i in range(len(now), len(saved))]
    else:
        weight = state_dict.get(f"{prefix}weight")
        if not isinstance(weight, Tensor) or weight.dim() < 1:
            raise ValueError(f"the state dict has no tensor {prefix}weight for the classifier")
        current = getattr(classifier, "out_features", None)
        if isinstance(current, int) and weight.shape[0] < current:
            raise ValueError(
                f"the state dict's classifier has {weight.shape[0]} classes, fewer than the model's {current}"
            )
        targets = [int(weight.shape[0])]
    _check_fits(classifier, targets, state_dict, prefix)
    for target in targets:
        grow_classifier(net, target)
    return int(getattr(_classifier(net), "out_features", targets[-1] if targets else 0))


def _check_fits(classifier: nn.Module, targets: list[int], state_dict: Mapping[str, Tensor], prefix: str) -> None:
    """Refuse, before the growth, a state dict whose classifier entries a classifier grown so would not load."""
    probe = copy.deepcopy(classifier).to("meta")  # shapes only: no memory, no random numbers drawn
    for target in targets:
        grow = getattr(probe, "grow_classes", None)
        if callable(grow):
            grow(target)
        elif isinstance(probe, nn.Linear):
            probe = nn.Linear(probe.in_features, target, bias=probe.bias is not None, device="meta")
    want = {key: tuple(value.shape) for key, value in probe.state_dict().items()}
    saved = {
        key[len(prefix) :]: tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        for key, value in state_dict.items()
        if key.startswith(prefix)
    }
    if saved != want:
        differ = sorted(k for k in set(want) | set(saved) if want.get(k) != saved.get(k))
        shown = ", ".join(
            f"{prefix}{k}: saved {saved.get(k, 'missing')}, grown {want.get(k, 'missing')}" for k in differ[:4]
        )
        raise ValueError(f"the state dict's classifier is not this classifier grown: {shown}")


def _check_optimizer(optimizer: object) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")


def _classifier(net: nn.Module) -> nn.Module | None:
    get = getattr(net, "get_classifier", None)
    if callable(get):
        try:
            return get()  # type: ignore[no-any-return]
        except NotImplementedError:
            return None
    return getattr(net, "classifier", None)


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
