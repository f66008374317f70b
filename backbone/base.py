"""The backbone base class and the ``returnt`` contract."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias, cast, get_args

import torch
from torch import Tensor, nn

from . import flat
from ._checks import check_num_classes, check_output_fmt
from .growth import grow_classifier
from .layout import Selection

__all__ = ["RETURN_TYPES", "BackboneOutput", "MammothBackbone", "ReturnType", "check_returnt", "feature_take_indices"]

ReturnType = Literal["out", "features", "both", "full"]
"""The values of ``returnt`` every backbone accepts, as a type for annotations.

Example:
    >>> from typing import get_args
    >>> from backbone import ReturnType
    >>> get_args(ReturnType)
    ('out', 'features', 'both', 'full')
"""

RETURN_TYPES: tuple[ReturnType, ...] = get_args(ReturnType)
"""The valid ``returnt`` values as a tuple.

Example:
    >>> from backbone import RETURN_TYPES
    >>> RETURN_TYPES
    ('out', 'features', 'both', 'full')
"""

BackboneOutput: TypeAlias = "Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]"
"""What :meth:`MammothBackbone.forward` returns: a tensor for ``'out'`` and
``'features'``, ``(logits, features)`` for ``'both'``, ``(logits, stages)``
for ``'full'``.

Example:
    >>> import torch
    >>> from backbone import MNISTMLP
    >>> output = MNISTMLP(4, 2)(torch.zeros(1, 4), returnt="full")
    >>> type(output).__name__, type(output[1]).__name__
    ('tuple', 'list')
"""


def check_returnt(returnt: object) -> ReturnType:
    """Return ``returnt`` unchanged if it is a valid ``returnt`` value.

    Backbones that write their own ``forward(x, returnt)`` call this first, so
    that every backbone rejects a bad value the same way.

    Args:
        returnt: the value to check.

    Returns:
        ``returnt``, typed as :data:`ReturnType`.

    Raises:
        ValueError: ``returnt`` is not one of :data:`RETURN_TYPES`.

    Example:
        >>> from backbone import check_returnt
        >>> check_returnt("both")
        'both'
        >>> check_returnt("all")
        Traceback (most recent call last):
        ...
        ValueError: returnt must be one of 'out', 'features', 'both', 'full'; got 'all'
    """
    if not isinstance(returnt, str) or returnt not in RETURN_TYPES:
        valid = ", ".join(repr(r) for r in RETURN_TYPES)
        raise ValueError(f"returnt must be one of {valid}; got {returnt!r}")
    return returnt


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Turn ``indices`` as :meth:`MammothBackbone.forward_intermediates` takes it into stage indices.

    It means what timm's function of the same name means: None selects every
    stage, an int ``n`` the last ``n``, a sequence the stages it lists
    (negative indices count from the end).

    Args:
        num_features: the number of stages.
        indices: the selection.

    Returns:
        The selected indices, counted from the first stage, and the largest.

    Raises:
        TypeError: ``indices`` is not None, an int or a sequence of ints.
        ValueError: an index is out of range, or the selection is empty.

    Example:
        >>> from backbone import feature_take_indices
        >>> feature_take_indices(5)
        ([0, 1, 2, 3, 4], 4)
        >>> feature_take_indices(5, 2)
        ([3, 4], 4)
        >>> feature_take_indices(5, [0, -1])
        ([0, 4], 4)
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)) or isinstance(indices, str):
        raise TypeError(f"indices must be None, an int or a sequence of ints, got {type(indices).__name__}")
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices as a last-n count must be from 1 to {num_features}, got {indices}")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"indices must be ints, got {type(index).__name__} {index!r}")
            absolute = num_features + index if index < 0 else index
            if not 0 <= absolute < num_features:
                raise ValueError(f"stage index must be from {-num_features} to {num_features - 1}, got {index}")
            take.append(absolute)
        if not take:
            raise ValueError("indices must select at least one stage, got an empty sequence")
    return take, max(take)


def forward_stages(
    x: Tensor,
    stages: Sequence[Callable[[Tensor], Tensor]],
    indices: int | Sequence[int] | None,
    stop_early: bool,
    intermediates_only: bool,
) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
    """``forward_intermediates`` for a backbone that is a chain of stages, with timm's meanings.

    Example:
        >>> import torch
        >>> from backbone.base import forward_stages
        >>> stages = [lambda t: t + 1, lambda t: 2 * t]
        >>> final, taken = forward_stages(torch.zeros(1), stages, None, False, False)
        >>> final.tolist(), [t.tolist() for t in taken]
        ([2.0], [[1.0], [2.0]])
    """
    take, last = feature_take_indices(len(stages), indices)
    wanted = set(take)
    intermediates = []
    for i, stage in enumerate(stages[: last + 1] if stop_early else stages):
        x = stage(x)
        if i in wanted:
            intermediates.append(x)
    return intermediates if intermediates_only else (x, intermediates)


def _strip_compile_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: object) -> None:
    """Accept a checkpoint saved from ``torch.compile(net)``, whose keys start with ``_orig_mod.``."""
    marker = prefix + "_orig_mod."
    for key in [k for k in state_dict if k.startswith(marker)]:
        state_dict[prefix + key[len(marker) :]] = state_dict.pop(key)


class _StopEarly(Exception):
    """Raised by a forward hook to end the forward once the last wanted stage has run."""


def _as_device(value: object) -> torch.device:
    """``torch.device(value)``, with a message that names the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        raise TypeError(f"device must be a torch.device, a str such as 'cuda:0' or an int, got {type(value).__name__}")
    try:
        return torch.device(value)
    except RuntimeError:
        raise ValueError(f"device must name a device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}") from None


class MammothBackbone(nn.Module):
    """Base class of backbones that continual-learning methods are written against.

    A backbone maps an input batch to logits and exposes what it computes on
    the way, selected by ``returnt`` in :meth:`forward`:

    ============== ==================================== ==========================
    ``returnt``    returns                              read by, for example
    ============== ==================================== ==========================
    ``'out'``      logits ``[B, num_classes]``          DER (soft targets)
    ``'features'`` features ``[B, D]``, just before     iCaRL (class means)
                   the classifier
    ``'both'``     ``(logits, features)``               methods that need both
    ``'full'``     ``(logits, [stage outputs])``,       TwF, LiDER
                   stages in depth order
    ============== ==================================== ==========================

    Any other value raises :class:`ValueError`.

    The class speaks timm's protocol, with timm's meanings, and builds
    ``returnt`` on it in one place:

    * :meth:`forward_features` gives the final *unpooled* output (a feature
      map ``[B, C, H, W]``, or a token sequence for a transformer);
    * :meth:`forward_head` pools it (and applies any norm or dropout before
      the classifier), then classifies; ``pre_logits=True`` stops before the
      classifier and gives the features ``[B, D]``;
    * :meth:`forward_intermediates` gives the final output and the output of
      each stage listed in :attr:`feature_info`;
    * :meth:`get_classifier`, :meth:`reset_classifier`, :attr:`num_features`
      and :attr:`num_classes` describe and replace the classifier.

    ``'out'`` is ``forward_head(forward_features(x))``, as timm's ``forward``
    is; ``'features'`` is ``forward_head(forward_features(x),
    pre_logits=True)``; ``'both'`` is the pair from one pass, and ``'full'``
    is those logits with every stage's output from
    :meth:`forward_intermediates`. A subclass that overrides
    :meth:`forward_head` (a head with its own classifying step, as some timm
    models have) therefore changes the logits of every ``returnt``.

    There are two ways to write a backbone:

    * Implement :meth:`forward_features`, set ``classifier``, ``feature_dim``
      and ``feature_info`` (the module whose output is each stage); the
      inherited methods do the rest, collecting the stages with forward
      hooks. Override :meth:`forward_head` if global average pooling over
      the spatial dimensions is not the pooling, and
      :meth:`forward_intermediates` to collect the stages without hooks.
    * Override ``forward(x, returnt)`` directly, as Mammoth's own backbones
      do; call :func:`check_returnt` first.

    Attributes:
        classifier: the module that maps features ``[B, D]`` to logits.
        feature_dim: ``D``, the size of the features returned by
            ``returnt='features'``; :attr:`num_features` is the same number
            under timm's name.
        feature_info: one dict per stage, in depth order, as timm's models
            have it: ``num_chs`` (its channels), ``reduction`` (how much
            smaller than the input its spatial size is) and ``module`` (the
            qualified name of the submodule whose output it is). It is known
            without running a forward.

    The flat-vector methods (:meth:`get_params`, :meth:`set_params`,
    :meth:`get_grads`, :meth:`set_grads`, :meth:`get_grads_list`) treat all
    parameters as one vector; see :mod:`backbone.flat`. The :attr:`device`
    attribute always reports where the parameters are.

    Args:
        device: where the backbone will live, as Mammoth's backbones take it
            (keyword only, and the only argument); it is what :attr:`device`
            reports while the backbone has no parameters or buffers.

    Raises:
        TypeError: any other argument is given (Python's own message), or
            ``device`` is not a device, a str or an int.
        ValueError: ``device`` does not name a device.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import MammothBackbone
        >>> class TinyConvNet(MammothBackbone):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        ...         self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        ...         self.classifier = nn.Linear(16, 2)
        ...         self.feature_dim = 16
        ...         self.feature_info = [
        ...             dict(num_chs=8, reduction=1, module="stem"),
        ...             dict(num_chs=16, reduction=2, module="stage"),
        ...         ]
        ...     def forward_features(self, x):
        ...         return self.stage(self.stem(x))
        >>> net = TinyConvNet()
        >>> x = torch.ones(5, 3, 8, 8)
        >>> net(x).shape
        torch.Size([5, 2])
        >>> net(x, returnt="features").shape
        torch.Size([5, 16])
        >>> logits, stages = net(x, returnt="full")
        >>> [tuple(s.shape) for s in stages]
        [(5, 8, 8, 8), (5, 16, 4, 4)]
    """

    classifier: nn.Module
    feature_dim: int
    feature_info: list[dict[str, Any]]

    def __init__(self, *, device: torch.device | str | int = "cpu") -> None:
        super().__init__()
        self._device_hint = _as_device(device)
        self.register_load_state_dict_pre_hook(_strip_compile_prefix)  # type: ignore[no-untyped-call]

    @property
    def device(self) -> torch.device:
        """The device of the backbone's parameters (or buffers).

        It follows every move (``to``, ``cuda``, ``cpu``). Assigning to it, as
        Mammoth-style subclasses do, is accepted and only matters while the
        backbone has no parameters or buffers: a device, a device string or
        an index is kept; a dtype, a tensor or None (what such a subclass's
        ``to()`` may pass on) is ignored; anything else is a
        :class:`TypeError`, and a string that names no device a
        :class:`ValueError`.

        Example:
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2)
            >>> net.device
            device(type='cpu')
            >>> net.device = "cpu"
            >>> net.device = "bogus"
            Traceback (most recent call last):
            ...
            ValueError: device must name a device such as 'cpu', 'cuda' or 'cuda:1', got 'bogus'
        """
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return self._device_hint

    @device.setter
    def device(self, value: object) -> None:
        # Mammoth's to(device) overrides assign whatever to() was given: a
        # dtype or a tensor is accepted and ignored, only a device is kept.
        if value is None or isinstance(value, (torch.dtype, Tensor)):
            return
        self._device_hint = _as_device(value)

    def forward(self, x: Tensor, returnt: ReturnType = "out") -> BackboneOutput:
        """Run the backbone and return what ``returnt`` selects.

        Args:
            x: the input batch, batch dimension first.
            returnt: ``'out'`` for logits, ``'features'`` for the features
                before the classifier, ``'both'`` for ``(logits, features)``,
                ``'full'`` for ``(logits, [output of every stage])``.

        Returns:
            A tensor, or a tuple as described above.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: ``returnt`` is not one of :data:`RETURN_TYPES`.
            NotImplementedError: the subclass implements neither
                :meth:`forward_features` nor its own ``forward``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> logits, features = net(torch.ones(5, 4), returnt="both")
            >>> logits.shape, features.shape
            (torch.Size([5, 2]), torch.Size([5, 3]))
        """
        return self._forward_returnt(x, returnt)

    def _forward_returnt(self, x: Tensor, returnt: object, **inputs: Any) -> BackboneOutput:
        """The ``returnt`` dispatch, passing ``inputs`` on to the two methods that take the input batch.

        A subclass whose ``forward`` takes more keyword arguments (the ViT's
        prompts) checks them, then calls this.
        """
        returnt = check_returnt(returnt)
        if not isinstance(x, Tensor):
            name = type(self).__name__
            raise TypeError(f"{name} expects the input batch x to be a torch.Tensor, got {type(x).__name__}")
        if returnt == "full":
            final, stages = cast("tuple[Tensor, list[Tensor]]", self.forward_intermediates(x, **inputs))
            return self._logits(final, self.forward_head(final, pre_logits=True)), stages
        final = self.forward_features(x, **inputs)
        features = self.forward_head(final, pre_logits=True)
        if returnt == "features":
            return features
        logits = self._logits(final, features)
        return logits if returnt == "out" else (logits, features)

    def _logits(self, final: Tensor, features: Tensor) -> Tensor:
        """``forward_head(final)``, without pooling twice where the inherited head is the head."""
        if type(self).forward_head is MammothBackbone.forward_head:
            # The inherited head is the classifier applied to its pre-logits.
            return cast(Tensor, self.get_classifier()(features))
        return self.forward_head(final)

    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the final unpooled output: a feature map, or tokens for a transformer.

        Subclasses that rely on the inherited :meth:`forward` implement this.

        Args:
            x: the input batch.

        Returns:
            The output of the last stage (after a final norm, if the
            backbone has one), before any pooling.

        Raises:
            NotImplementedError: always, in the base class.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> resnet18(10, num_filters=4).forward_features(torch.zeros(2, 3, 32, 32)).shape
            torch.Size([2, 32, 4, 4])
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement forward_features(x) or override forward(x, returnt)"
        )

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the output of :meth:`forward_features`, then classify it.

        The default pooling averages over every dimension after the second
        (global average pooling of a ``[B, C, H, W]`` map); a ``[B, D]`` input
        is left as it is. Backbones that pool otherwise (a class token, say)
        override this.

        Args:
            x: the output of :meth:`forward_features`.
            pre_logits: stop before the classifier and return the features
                ``[B, D]``.

        Returns:
            The logits, or the features with ``pre_logits=True``.

        Raises:
            NotImplementedError: the classifier is needed and the backbone has none.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> net = resnet18(10, num_filters=4)
            >>> final = net.forward_features(torch.zeros(2, 3, 32, 32))
            >>> net.forward_head(final, pre_logits=True).shape, net.forward_head(final).shape
            (torch.Size([2, 32]), torch.Size([2, 10]))
        """
        if x.dim() > 2:
            x = x.mean(dim=tuple(range(2, x.dim())))
        return x if pre_logits else cast(Tensor, self.get_classifier()(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Return the final output and the output of the stages ``indices`` selects.

        The arguments and the result mean what they mean in timm. The default
        runs :meth:`forward_features` with a forward hook on the module each
        :attr:`feature_info` entry names (each must run once per forward);
        backbones override it to collect the stages directly.

        Args:
            x: the input batch.
            indices: which stages: all when None, the last ``n`` for an int
                ``n``, or a sequence of stage indices (negative ones count
                from the end). The outputs come in depth order.
            norm: apply the final norm to the intermediates, for backbones
                that have one; ignored by the default.
            stop_early: stop after the last selected stage; the "final"
                output is then that stage's output.
            output_fmt: the layout of the intermediates; the default supports
                ``'NCHW'`` only (the stages' own layout).
            intermediates_only: return only the list of intermediates.

        Returns:
            ``(final, intermediates)``, or ``intermediates`` alone.

        Raises:
            NotImplementedError: the backbone has no :attr:`feature_info`.
            ValueError: an index is out of range, or ``output_fmt`` is not
                supported.
            TypeError: ``indices`` is neither None, an int nor a sequence of ints.

        Example:
            >>> import torch
            >>> from backbone import resnet18
            >>> net = resnet18(10, num_filters=4)
            >>> final, stages = net.forward_intermediates(torch.zeros(2, 3, 32, 32), indices=2)
            >>> final.shape, [s.shape[1] for s in stages]
            (torch.Size([2, 32, 4, 4]), [16, 32])
        """
        info = getattr(self, "feature_info", None)
        if not info:
            raise NotImplementedError(
                f"{type(self).__name__} has no feature_info: list its stages there, or override forward_intermediates"
            )
        check_output_fmt(output_fmt, ("NCHW",))
        take, last = feature_take_indices(len(info), indices)
        modules = [self.get_submodule(entry["module"]) for entry in info]
        outputs: dict[int, Tensor] = {}

        def keep(index: int) -> Callable[[nn.Module, object, Tensor], None]:
            def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
                outputs[index] = output
                if stop_early and index == last:
                    raise _StopEarly

            return hook

        handles = [modules[i].register_forward_hook(keep(i)) for i in sorted(set(take))]
        try:
            final = self.forward_features(x)
        except _StopEarly:
            final = outputs[last]
        finally:
            for handle in handles:
                handle.remove()
        intermediates = [outputs[i] for i in sorted(set(take))]
        return intermediates if intermediates_only else (final, intermediates)

    def get_classifier(self) -> nn.Module:
        """Return the classifier, the module that maps features ``[B, D]`` to logits.

        Returns:
            ``self.classifier``.

        Raises:
            NotImplementedError: the backbone has no ``classifier``.

        Example:
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(4, 2, hidden_size=3).get_classifier()
            Linear(in_features=3, out_features=2, bias=True)
        """
        classifier = self._modules.get("classifier")
        if classifier is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no classifier: set self.classifier in __init__ or override get_classifier"
            )
        return classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a new one for ``num_classes`` classes, as timm's models do.

        The new classifier is a :class:`torch.nn.Linear` from
        :attr:`num_features` to ``num_classes`` on the old one's device and
        dtype, initialised by :meth:`init_classifier`; ``num_classes=0``
        removes it (an identity, so that the logits are the features).

        Args:
            num_classes: the number of classes, 0 for none.

        Raises:
            TypeError: ``num_classes`` is not an int.
            ValueError: ``num_classes`` is negative.

        Example:
            >>> from backbone import resnet18
            >>> net = resnet18(10, num_filters=4)
            >>> net.reset_classifier(100)
            >>> net.num_classes, net.get_classifier().out_features
            (100, 100)
        """
        check_num_classes(num_classes)
        try:
            old: nn.Module | None = self.get_classifier()
        except NotImplementedError:
            old = None
        # The new head goes where the old one was, else where the backbone is.
        reference = next(itertools.chain(old.parameters() if old is not None else (), self.parameters()), None)
        factory: dict[str, Any] = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        if num_classes == 0:
            self.classifier = nn.Identity()
        else:
            self.classifier = nn.Linear(self.num_features, num_classes, **factory)
            self.init_classifier(self.classifier)
        self._num_classes = num_classes

    def grow_classifier(self, num_classes: int, *, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Add output units to the linear classifier, keeping the old ones bit for bit.

        See :func:`backbone.grow_classifier`: the Parameter objects are kept
        and resized in place, the new units are initialised by
        :meth:`init_classifier`, and ``optimizer``'s state (if given) grows
        with zeros for them. Flat vectors kept from before move to the new
        layout with :func:`~backbone.carry_vector`.

        Args:
            num_classes: the new number of classes, at least the current one.
            optimizer: an optimizer whose per-parameter state to carry.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> optimizer = torch.optim.Adam(net.parameters())
            >>> net.grow_classifier(4, optimizer=optimizer)
            >>> net.num_classes, net(torch.zeros(1, 4)).shape
            (4, torch.Size([1, 4]))
        """
        grow_classifier(self, num_classes, optimizer=optimizer)

    def init_classifier(self, classifier: nn.Linear) -> None:
        """Initialise a classifier made by :meth:`reset_classifier`; torch's default here.

        Backbones whose classifier is initialised otherwise (the MLP's
        Glorot-uniform, say) override it.

        Args:
            classifier: the new classifier.

        Example:
            >>> from torch import nn
            >>> from backbone import MNISTMLP
            >>> head = nn.Linear(3, 2)
            >>> MNISTMLP(4, 2, hidden_size=3).init_classifier(head)
            >>> head.bias.abs().sum().item()
            0.0
        """

    @property
    def num_features(self) -> int:
        """``D``, the size of the features before the classifier: timm's name for :attr:`feature_dim`.

        Example:
            >>> from backbone import resnet18
            >>> net = resnet18(10)
            >>> net.num_features == net.feature_dim == 512
            True
        """
        return self.feature_dim

    @num_features.setter
    def num_features(self, value: int) -> None:
        self.feature_dim = value

    @property
    def num_classes(self) -> int:
        """The classifier's ``out_features`` (the number of logits), 0 without a classifier.

        Example:
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(784, 10).num_classes
            10
        """
        classifier = self._modules.get("classifier")
        out = getattr(classifier, "out_features", None)
        if isinstance(out, int) and not isinstance(out, bool):
            return out
        return int(self.__dict__.get("_num_classes", 0))

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self._num_classes = value

    def features(self, x: Tensor) -> Tensor:
        """Return the features of ``x``; the same as ``self(x, returnt='features')``.

        Args:
            x: the input batch.

        Returns:
            The features ``[B, D]``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> x = torch.ones(5, 4)
            >>> torch.equal(net.features(x), net(x, returnt="features"))
            True
        """
        return cast(Tensor, self(x, returnt="features"))

    def get_params(
        self, *, out: Tensor | None = None, select: Selection = None, discard_classifier: bool = False
    ) -> Tensor:
        """Return all parameters (or the selected ones) as one differentiable 1-D tensor.

        See :func:`backbone.get_params`. ``discard_classifier=True`` is
        Mammoth's name for ``select="no_classifier"``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(784, 10)
            >>> net.get_params().shape
            torch.Size([89610])
            >>> anchor = net.get_params().detach()
            >>> ((net.get_params() - anchor) ** 2).sum().backward()
            >>> net.get_grads().abs().sum().item()
            0.0
            >>> net.get_params(discard_classifier=True).shape
            torch.Size([88600])
        """
        return flat.get_params(self, out=out, select=_select(select, discard_classifier))

    def set_params(self, new_params: Tensor, *, select: Selection = None) -> None:
        """Copy a flat vector into the parameters, in place.

        See :func:`backbone.set_params`.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.set_params(torch.zeros(35))
            >>> net.get_params().abs().sum().item()
            0.0
            >>> net.set_params(torch.zeros(36))
            Traceback (most recent call last):
            ...
            ValueError: new_params must have 35 elements (one per parameter element), got 36
        """
        flat.set_params(self, new_params, select=select)

    def get_grads(
        self, *, out: Tensor | None = None, select: Selection = None, discard_classifier: bool = False
    ) -> Tensor:
        """Return all gradients (or the selected ones) as one 1-D tensor, zeros where there is none.

        See :func:`backbone.get_grads`. ``discard_classifier=True`` is
        Mammoth's name for ``select="no_classifier"``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net(torch.ones(5, 4)).sum().backward()
            >>> net.get_grads().shape
            torch.Size([35])
            >>> net.get_grads(select="trainable", discard_classifier=True)
            Traceback (most recent call last):
            ...
            TypeError: discard_classifier=True is select='no_classifier'; pass one of them, got select='trainable' too
        """
        return flat.get_grads(self, out=out, select=_select(select, discard_classifier))

    def set_grads(self, new_grads: Tensor, *, select: Selection = None) -> None:
        """Copy a flat vector into the gradients, creating them where missing.

        See :func:`backbone.set_grads`.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.set_grads(torch.ones(35))
            >>> net.classifier.bias.grad
            tensor([1., 1.])
        """
        flat.set_grads(self, new_grads, select=select)

    def get_grads_list(self, *, select: Selection = None) -> list[Tensor]:
        """Return one flat gradient per parameter.

        See :func:`backbone.get_grads_list`.

        Example:
            >>> from backbone import MNISTMLP
            >>> [g.numel() for g in MNISTMLP(4, 2, hidden_size=3).get_grads_list()]
            [12, 3, 9, 3, 6, 2]
        """
        return flat.get_grads_list(self, select=select)


def _select(select: Selection, discard_classifier: object) -> Selection:
    """The selection a getter was asked for, under either of its names."""
    if not isinstance(discard_classifier, bool):
        raise TypeError(f"discard_classifier must be a bool, got {type(discard_classifier).__name__}")
    if not discard_classifier:
        return select
    if select is not None and not (isinstance(select, str) and select == "no_classifier"):
        raise TypeError(
            f"discard_classifier=True is select='no_classifier'; pass one of them, got select={select!r} too"
        )
    return "no_classifier"
