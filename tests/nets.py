"""Small backbones used across the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backbone import MammothBackbone, check_returnt, num_flat_features, xavier


class TinyNet(MammothBackbone):
    """Two stages and a classifier, through the shared dispatch (stages found by hooks)."""

    def __init__(self, in_features: int = 4, hidden: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        self.stage1 = nn.Linear(in_features, hidden)
        self.act1 = nn.ReLU()
        self.stage2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden
        self.feature_info = [
            {"num_chs": hidden, "reduction": 1, "module": "act1"},
            {"num_chs": hidden, "reduction": 1, "module": "act2"},
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.act2(self.stage2(self.act1(self.stage1(x))))  # type: ignore[no-any-return]


class MammothStyleNet(MammothBackbone):
    """Written the way Mammoth's documented backbones are: own forward and to."""

    def __init__(self, input_size: int = 8, output_size: int = 3) -> None:
        super().__init__()
        self.device = "cpu"
        self.fc1 = nn.Linear(input_size, 5)
        self.fc2 = nn.Linear(5, 5)
        self._features = nn.Sequential(self.fc1, nn.ReLU(), self.fc2, nn.ReLU())
        self.classifier = nn.Linear(5, output_size)
        self.feature_dim = 5
        self.apply(xavier)

    def to(self, device, **kwargs):  # type: ignore[no-untyped-def, override]
        super().to(device, **kwargs)
        self.device = device
        return self

    def forward(self, x: Tensor, returnt: str = "out"):  # type: ignore[no-untyped-def, override]
        returnt = check_returnt(returnt)
        x = x.view(-1, num_flat_features(x))
        h1 = self.fc1(x).relu()
        feats = self.fc2(h1).relu()
        if returnt == "features":
            return feats
        out = self.classifier(feats)
        if returnt == "out":
            return out
        if returnt == "both":
            return out, feats
        return out, [h1, feats]


class TiedFrozenUnused(MammothBackbone):
    """A tied pair, a frozen layer and a branch that forward never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 4)
        self.decoder.weight = self.encoder.weight
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(4, 7)
        self.classifier = nn.Linear(4, 2)
        self.feature_dim = 4

        self.feature_info = [{"num_chs": 4, "reduction": 1, "module": "frozen"}]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.frozen(self.decoder(self.encoder(x).relu()).relu())  # type: ignore[no-any-return]


class ConvNet(MammothBackbone):
    """A convolutional backbone, for channels_last gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(6, 4)
        self.feature_dim = 6
        self.feature_info = [{"num_chs": 6, "reduction": 1, "module": "act"}]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]


def snapshot(net: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    """Copies of every parameter and gradient, to assert that nothing changed."""
    return [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in net.parameters()]


def assert_unchanged(net: nn.Module, before: list[tuple[Tensor, Tensor | None]]) -> None:
    after = snapshot(net)
    assert len(after) == len(before)
    for (p0, g0), (p1, g1) in zip(before, after, strict=True):
        assert torch.equal(p0, p1)
        assert (g0 is None) == (g1 is None)
        if g0 is not None:
            assert g1 is not None and torch.equal(g0, g1)


class DropoutNet(TinyNet):
    """Valid, but random in training mode: the checker must run it in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return super().forward_head(self.dropout(x), pre_logits)


class StatefulNet(TinyNet):
    """A forward that changes state: a counter in place, a reassigned buffer, a tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("last_mean", torch.zeros(3))
        self.stage2.last_input = torch.zeros(0)

    def forward_features(self, x: Tensor) -> Tensor:
        features = super().forward_features(x)
        self.calls += 1
        self.last_mean = features.detach().mean(0)  # reassigns the buffer
        self.stage1.seen = x.detach()  # a new tensor attribute, as Mammoth's blocks keep 'prerelu'
        self.stage2.last_input = x.detach()  # an existing one, reassigned
        return features
