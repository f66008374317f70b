"""The backbone base class and the ``returnt`` contract."""

from __future__ import annotations

import itertools
from typing import Any, Literal, TypeAlias, cast, get_args

import torch
from torch import Tensor, nn

from backbone import flat

__all__ = ["RETURN_TYPES", "BackboneOutput", "MammothBackbone", "ReturnType", "check_returnt"]

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

    There are two ways to write a backbone:

    * Implement :meth:`forward_intermediates` (features and stage outputs) and
      set ``classifier``; the inherited :meth:`forward` does the ``returnt``
      dispatch. Override :meth:`forward_features` too if the features can be
      computed more cheaply without keeping the stages.
    * Override ``forward(x, returnt)`` directly, as Mammoth's own backbones
      do; call :func:`check_returnt` first.

    Attributes:
        classifier: the module that maps features ``[B, D]`` to logits. Methods
            that grow or replace the head, and :meth:`forward_head`, use it.
        feature_dim: ``D``, the size of the features returned by
            ``returnt='features'``.

    The flat-vector methods (:meth:`get_params`, :meth:`set_params`,
    :meth:`get_grads`, :meth:`set_grads`, :meth:`get_grads_list`) treat all
    parameters as one vector; see :mod:`backbone.flat`. The :attr:`device`
    attribute always reports where the parameters are.

    Args:
        **kwargs: only ``device`` is accepted, for compatibility with Mammoth;
            it is what :attr:`device` reports while the backbone has no
            parameters or buffers.

    Raises:
        TypeError: an unknown keyword argument is given, or ``device`` is
            not a device, a str or an int.
        ValueError: ``device`` does not name a device.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backbone import MammothBackbone
        >>> class TinyNet(MammothBackbone):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Linear(4, 3)
        ...         self.classifier = nn.Linear(3, 2)
        ...         self.feature_dim = 3
        ...     def forward_intermediates(self, x):
        ...         h = self.body(x).relu()
        ...         return h, [h]
        >>> net = TinyNet()
        >>> x = torch.ones(5, 4)
        >>> net(x).shape
        torch.Size([5, 2])
        >>> net(x, returnt="features").shape
        torch.Size([5, 3])
        >>> logits, stages = net(x, returnt="full")
        >>> len(stages)
        1
    """

    classifier: nn.Module
    feature_dim: int

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - {"device"})
        if unknown:
            raise TypeError(f"MammothBackbone accepts only the keyword argument 'device'; got {unknown}")
        super().__init__()
        self._device_hint = _as_device(kwargs.get("device", "cpu"))

    @property
    def device(self) -> torch.device:
        """The device of the backbone's parameters (or buffers).

        It follows every move (``to``, ``cuda``, ``cpu``). Assigning to it, as
        Mammoth-style subclasses do, is accepted and only matters while the
        backbone has no parameters or buffers.

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
        # Mammoth's to(device) overrides assign whatever they were given,
        # dtypes included; only a real device is worth remembering.
        if isinstance(value, (str, int, torch.device)) and not isinstance(value, bool):
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
                :meth:`forward_intermediates` nor its own ``forward``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> logits, features = net(torch.ones(5, 4), returnt="both")
            >>> logits.shape, features.shape
            (torch.Size([5, 2]), torch.Size([5, 3]))
        """
        returnt = check_returnt(returnt)
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{type(self).__name__} expects the input batch x to be a torch.Tensor, got {type(x).__name__}"
            )
        if returnt == "features":
            return self.forward_features(x)
        if returnt == "full":
            features, stages = self.forward_intermediates(x)
            return self.forward_head(features), stages
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return logits if returnt == "out" else (logits, features)

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Compute the features and the output of every stage.

        Subclasses that rely on the inherited :meth:`forward` implement this.

        Args:
            x: the input batch.

        Returns:
            ``(features, stages)``: features ``[B, D]`` just before the
            classifier and the list of stage outputs in depth order.

        Raises:
            NotImplementedError: always, in the base class.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> features, stages = MNISTMLP(4, 2, hidden_size=3).forward_intermediates(torch.ones(5, 4))
            >>> [s.shape for s in stages]
            [torch.Size([5, 3]), torch.Size([5, 3])]
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement forward_intermediates(x) or override forward(x, returnt)"
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Compute the features ``[B, D]`` just before the classifier.

        The default takes them from :meth:`forward_intermediates`.

        Args:
            x: the input batch.

        Returns:
            The features.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(4, 2, hidden_size=3).forward_features(torch.ones(5, 4)).shape
            torch.Size([5, 3])
        """
        return self.forward_intermediates(x)[0]

    def forward_head(self, features: Tensor) -> Tensor:
        """Map features to logits with :attr:`classifier`.

        Args:
            features: the output of :meth:`forward_features`.

        Returns:
            The logits.

        Raises:
            NotImplementedError: the backbone has no ``classifier``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(4, 2, hidden_size=3).forward_head(torch.ones(5, 3)).shape
            torch.Size([5, 2])
        """
        classifier = self._modules.get("classifier")
        if classifier is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no classifier: set self.classifier in __init__ or override forward_head"
            )
        return cast(Tensor, classifier(features))

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

    def get_params(self, *, out: Tensor | None = None) -> Tensor:
        """Return all parameters as one differentiable 1-D tensor.

        See :func:`backbone.get_params`.

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
        """
        return flat.get_params(self, out=out)

    def set_params(self, new_params: Tensor) -> None:
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
        flat.set_params(self, new_params)

    def get_grads(self, *, out: Tensor | None = None) -> Tensor:
        """Return all gradients as one 1-D tensor, zeros where there is none.

        See :func:`backbone.get_grads`.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net(torch.ones(5, 4)).sum().backward()
            >>> net.get_grads().shape
            torch.Size([35])
        """
        return flat.get_grads(self, out=out)

    def set_grads(self, new_grads: Tensor) -> None:
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
        flat.set_grads(self, new_grads)

    def get_grads_list(self) -> list[Tensor]:
        """Return one flat gradient per parameter.

        See :func:`backbone.get_grads_list`.

        Example:
            >>> from backbone import MNISTMLP
            >>> [g.numel() for g in MNISTMLP(4, 2, hidden_size=3).get_grads_list()]
            [12, 3, 9, 3, 6, 2]
        """
        return flat.get_grads_list(self)
