"""A multi-layer perceptron for flattened inputs such as MNIST."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_input, check_output_fmt, check_positive_ints
from ..base import MammothBackbone, feature_take_indices, forward_stages
from ..init import xavier
from ..registry import register_backbone

__all__ = ["MNISTMLP"]


# Mammoth's MNISTMLP holds the same three layers three times over: as fc1, fc2
# and classifier, inside _features, and inside net; its state_dict has all 16.
_MAMMOTH_ALIASES = {
    "_features.0.": "fc1.",
    "_features.2.": "fc2.",
    "net.0.0.": "fc1.",
    "net.0.2.": "fc2.",
    "net.1.": "classifier.",
}


def _accept_mammoth_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
    """Fold the alias keys of a Mammoth MNISTMLP checkpoint into this model's own, checking they agree."""
    for alias, canonical in _MAMMOTH_ALIASES.items():
        for name in ("weight", "bias"):
            key, target = prefix + alias + name, prefix + canonical + name
            if key not in state_dict:
                continue
            value = state_dict.pop(key)
            if target not in state_dict:
                state_dict[target] = value
            elif not torch.equal(state_dict[target], value):
                raise ValueError(
                    f"the checkpoint's {key!r} should be an alias of {target!r} (as in Mammoth's MNISTMLP), "
                    "but their values differ"
                )


@register_backbone("mnistmlp", example_kwargs={"input_size": 784, "output_size": 10}, example_input_shape=(1, 28, 28))
class MNISTMLP(MammothBackbone):
    """Two hidden ReLU layers and a linear classifier, initialised with :func:`~backbone.xavier`.

    Inputs of any shape are flattened per sample, so ``[B, 1, 28, 28]`` and
    ``[B, 784]`` both work for ``input_size=784``. The two hidden layers are
    the stages: ``returnt='full'`` gives ``(logits, [hidden1, hidden2])``, and
    :meth:`forward_features` gives ``hidden2``, which needs no pooling.

    Checkpoints of Mammoth's ``MNISTMLP`` load too: their ``state_dict``
    holds each layer three times (also as ``_features.*`` and ``net.*``), and
    those aliases are folded into ``fc1``, ``fc2`` and ``classifier`` (a
    :class:`ValueError` if an alias disagrees with the key it aliases).

    Args:
        input_size: the number of input features per sample.
        output_size: the number of classes.
        hidden_size: the width of both hidden layers.

    Raises:
        ValueError: a size is not a positive integer.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP
        >>> net = MNISTMLP(784, 10)
        >>> sum(p.numel() for p in net.parameters())
        89610
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.feature_dim
        100
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 100) -> None:
        check_positive_ints(input_size=input_size, output_size=output_size, hidden_size=hidden_size)
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.feature_dim = hidden_size
        self.return_prerelu = False
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(hidden_size, output_size)
        self.feature_info = [
            {"num_chs": hidden_size, "reduction": 1, "module": "act1"},
            {"num_chs": hidden_size, "reduction": 1, "module": "act2"},
        ]
        self.apply(xavier)
        self.register_load_state_dict_pre_hook(_accept_mammoth_keys)  # type: ignore[no-untyped-call]

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the second hidden layer, ``[B, hidden_size]``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> MNISTMLP(4, 2, hidden_size=3).forward_features(torch.ones(5, 4)).shape
            torch.Size([5, 3])
        """
        check_input(self, x, self.fc1.weight, features=self.input_size)
        return self.act2(self.fc2(self.act1(self.fc1(x.flatten(1)))))  # type: ignore[no-any-return]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Return the second hidden layer and the hidden layers ``indices`` selects.

        See :meth:`MammothBackbone.forward_intermediates`; there is no norm
        to apply, and the stages are ``[B, hidden_size]``.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> final, stages = MNISTMLP(4, 2, hidden_size=3).forward_intermediates(torch.ones(5, 4))
            >>> final.shape, len(stages)
            (torch.Size([5, 3]), 2)
        """
        check_output_fmt(output_fmt, ("NCHW",))
        check_input(self, x, self.fc1.weight, features=self.input_size)
        pre: list[Tensor] = []

        def stage(linear: nn.Linear, act: nn.Module) -> Callable[[Tensor], Tensor]:
            def run(h: Tensor) -> Tensor:
                h = linear(h.flatten(1))
                pre.append(h)
                return cast(Tensor, act(h))

            return run

        stages = [stage(self.fc1, self.act1), stage(self.fc2, self.act2)]
        result = forward_stages(x, stages, indices, stop_early, intermediates_only)
        if not self.return_prerelu:
            return result
        chosen = [pre[i] for i in sorted(set(feature_take_indices(2, indices)[0]))]
        return chosen if intermediates_only else (cast("tuple[Tensor, list[Tensor]]", result)[0], chosen)

    def set_return_prerelu(self, enable: bool = True) -> None:
        """Make ``'full'`` give each hidden layer before its ReLU: ``fc1(x)`` and ``fc2(hidden1)``.

        The logits and features do not change.

        Args:
            enable: turn the pre-activation outputs on or off.

        Raises:
            TypeError: ``enable`` is not a bool.

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.set_return_prerelu(True)
            >>> x = torch.randn(5, 4)
            >>> _, (pre1, pre2) = net(x, returnt="full")
            >>> torch.equal(pre1, net.fc1(x))
            True
        """
        check_bool("enable", enable)
        self.return_prerelu = enable

    def init_classifier(self, classifier: nn.Linear) -> None:
        """Glorot-uniform weights and zero bias, as at construction (see :func:`~backbone.xavier`).

        Example:
            >>> import torch
            >>> from backbone import MNISTMLP
            >>> net = MNISTMLP(4, 2, hidden_size=3)
            >>> net.reset_classifier(7)
            >>> torch.equal(net.classifier.bias, torch.zeros(7))
            True
        """
        xavier(classifier)
