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


class _PlusOne(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1


class ClassifierNotHead(TinyNet):
    """get_classifier() is not the classifier attribute."""

    def get_classifier(self) -> torch.nn.Module:
        return torch.nn.Sequential(self.classifier, _PlusOne())


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


class FullLogitsDiffer(TinyNet):
    """'full' gives a well-formed pair whose logits are not the logits."""

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt == "full":
            logits, stages = super().forward(x, "full")
            return logits + 1, stages
        return super().forward(x, returnt)  # type: ignore[arg-type]


class SetParamsReplacesParameters(TinyNet):
    """Right values, new Parameter objects: an optimizer built before is detached."""

    def set_params(self, new_params: Tensor) -> None:
        offset = 0
        for module in self.modules():
            for name, p in list(module._parameters.items()):
                assert p is not None
                piece = new_params[offset : offset + p.numel()].view_as(p).clone()
                setattr(module, name, torch.nn.Parameter(piece.to(p.dtype)))
                offset += p.numel()


class GetParamsDetached(TinyNet):
    def get_params(self, *, out: Tensor | None = None) -> Tensor:
        return super().get_params(out=out).detach()


class ReversedLayout(TinyNet):
    """get_params/set_params and get_grads/set_grads agree with each other, in reversed parameter order."""

    def _order(self) -> list[torch.nn.Parameter]:
        return list(self.parameters())[::-1]

    def get_params(self, *, out: Tensor | None = None) -> Tensor:
        return torch.cat([p.reshape(-1) for p in self._order()])

    def set_params(self, new_params: Tensor) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(new_params.clone(), self._order())

    def get_grads(self, *, out: Tensor | None = None) -> Tensor:
        return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in self._order()])

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        for p in self._order():
            p.grad = new_grads[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


class SetGradsReversed(TinyNet):
    """set_grads writes the pieces in reversed order; get_grads reads them back the same way."""

    def _order(self) -> list[torch.nn.Parameter]:
        return list(self.parameters())[::-1]

    def get_grads(self, *, out: Tensor | None = None) -> Tensor:
        return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in self._order()])

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        for p in self._order():
            p.grad = new_grads[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


class LogitsStayFloat32(TinyNet):
    """Converts its parameters but casts the logits back to float32."""

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        result = super().forward(x, returnt)  # type: ignore[arg-type]
        return result.float() if isinstance(result, Tensor) else result


class PrereluIgnored(TinyNet):
    """A no-op set_return_prerelu: 'full' still gives post-ReLU stages."""

    def set_return_prerelu(self, enable: bool = True) -> None:
        self.return_prerelu = enable


class PrereluChangesLogits(TinyNet):
    def set_return_prerelu(self, enable: bool = True) -> None:
        self.return_prerelu = enable

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return super().forward_head(x + 1 if getattr(self, "return_prerelu", False) else x, pre_logits)


class SetParamsAliases(TinyNet):
    """Mammoth's set_params: each parameter becomes a view of the vector."""

    def set_params(self, new_params: Tensor) -> None:
        offset = 0
        for p in self.parameters():
            p.data = new_params[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()


class SetGradsAliases(TinyNet):
    """Each .grad becomes a view of the vector."""

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        for p in self.parameters():
            p.grad = new_grads[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()


class GetGradsNeedsEveryGrad(TinyNet):
    """Mammoth's get_grads: fails on a parameter whose .grad is None."""

    def get_grads(self) -> Tensor:  # type: ignore[override]
        return torch.cat([p.grad.view(-1) for p in self.parameters()])  # type: ignore[union-attr]


class OutSkipsTheHead(TinyNet):
    """A head that scales its logits, which 'out' bypasses by applying the classifier itself."""

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = super().forward_head(x, pre_logits=True)
        return pooled if pre_logits else 2 * self.classifier(pooled)

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        if returnt == "out":
            return self.classifier(self.forward_head(self.forward_features(x), pre_logits=True))
        return super().forward(x, returnt)  # type: ignore[arg-type]


class ForwardTypo(TinyNet):
    """A forward with a typo: every call raises AttributeError."""

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stage_1(x)  # type: ignore[no-any-return]


class SetGradsOnlyExisting(TinyNet):
    """Writes only the gradients that exist: after zero_grad() (set to None) it does nothing."""

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        for p in self.parameters():
            if p.grad is not None:
                p.grad.copy_(new_grads[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()


class SetGradsOnlyMissing(TinyNet):
    """Creates missing gradients, but leaves existing ones as they were."""

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        for p in self.parameters():
            if p.grad is None:
                p.grad = new_grads[offset : offset + p.numel()].view(p.shape).clone()
            offset += p.numel()


class SetGradsCreatesOnlyWhenAllNone(TinyNet):
    """Creates gradients only when every one is None; in a mixed state (a branch backward missed) it skips the None."""

    def set_grads(self, new_grads: Tensor) -> None:
        offset = 0
        every_none = all(p.grad is None for p in self.parameters())
        for p in self.parameters():
            piece = new_grads[offset : offset + p.numel()].view(p.shape)
            if p.grad is not None:
                p.grad.copy_(piece)
            elif every_none:
                p.grad = piece.clone()
            offset += p.numel()
