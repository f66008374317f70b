"""Backbones that each break one rule of the contract, for the checker's tests."""

from __future__ import annotations

import torch
from nets import TinyNet
from torch import Tensor


class DefaultNotOut(TinyNet):
    def forward(self, x: Tensor, returnt: str = "features"):  # type: ignore[no-untyped-def, override]
        return super().forward(x, returnt)  # type: ignore[arg-type]


class FeaturesNot2D(TinyNet):
    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt == "features":
            return super().forward(x, "features").unsqueeze(-1)
        return super().forward(x, returnt)  # type: ignore[arg-type]


class BothSwapped(TinyNet):
    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt == "both":
            logits, features = super().forward(x, "both")
            return features, logits
        return super().forward(x, returnt)  # type: ignore[arg-type]


class FullIsLogits(TinyNet):
    """Like Mammoth's ResNet32, which silently returns logits for 'full'."""

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        return super().forward(x, "out" if returnt == "full" else returnt)  # type: ignore[arg-type]


class FeaturesMethodDiffers(TinyNet):
    def features(self, x: Tensor) -> Tensor:
        return super().features(x) + 1


class AcceptsAnyReturnt(TinyNet):
    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt not in ("out", "features", "both", "full"):
            returnt = "out"
        return super().forward(x, returnt)  # type: ignore[arg-type]


class AssertsOnReturnt(TinyNet):
    """Like Mammoth's ViT, which fails with AssertionError."""

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        assert returnt in ("out", "features", "both", "full")
        return super().forward(x, returnt)  # type: ignore[arg-type]


class ClassifierNotHead(TinyNet):
    def forward_head(self, features: Tensor) -> Tensor:
        return super().forward_head(features) * 2


class WrongFeatureDim(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 99


class SetParamsIgnored(TinyNet):
    def set_params(self, new_params: Tensor) -> None:
        pass


class SetParamsHalfWay(TinyNet):
    """Writes the first parameter, then breaks: the checker must undo it."""

    def set_params(self, new_params: Tensor) -> None:
        with torch.no_grad():
            self.stage1.weight.fill_(123.0)
        raise RuntimeError("broke half-way")


class SetGradsIgnored(TinyNet):
    def set_grads(self, new_grads: Tensor) -> None:
        pass


class ToIgnoresDtype(TinyNet):
    def to(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        return self


class NotABackbone(torch.nn.Module):
    """A plain module: no returnt at all."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)  # type: ignore[no-any-return]
