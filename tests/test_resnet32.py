"""The CIFAR ResNet-32, against a forward written here from the structure of Mammoth's ``backbone/ResNet32.py``.

That structure: a 3x3 stem conv (3 to 16 channels, no bias), ReLU, then the
BatchNorm ``bn_initial``; ``layer1`` to ``layer3`` of five basic blocks with
16, 32 and 64 channels, each block conv1 (3x3, stride 2 in the first block of
layers 2 and 3), ReLU, bn1, conv2, bn2, plus the shortcut, then ReLU, except
the last block of ``layer3``, which has none; the shortcut of a stride-2 block
takes every other row and column and pads ``planes // 4`` zero channels on
either side. Every BatchNorm has eps 1e-4. ``bn_final`` exists and is never
applied; ``AvgPool2d(8)``, then ``classifier``, a Linear from 64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbone import (
    CONTRACT_RULES,
    MNISTMLP,
    ContractError,
    MammothBackbone,
    ResNet32,
    check_backbone,
    get_backbone,
    get_grads,
    grow_classifier,
    list_backbones,
    registered,
    resnet32,
)

EPS = 1e-4
WIDTHS = {1: 16, 2: 32, 3: 64}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def blocks() -> Iterator[tuple[str, int, int, int, bool]]:
    """(name, in channels, out channels, stride, last) of each block, in order."""
    in_planes = 16
    for layer, planes in WIDTHS.items():
        for b in range(5):
            stride = 2 if layer > 1 and b == 0 else 1
            yield f"layer{layer}.{b}", in_planes if b == 0 else planes, planes, stride, layer == 3 and b == 4
        in_planes = planes


def mammoth_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every key of Mammoth's resnet32 state dict, in its order, with its shape."""

    def bn(name: str, channels: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.{k}": () if k == "num_batches_tracked" else (channels,) for k in BN_KEYS}

    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (16, 3, 3, 3), **bn("bn_initial", 16)}
    for name, in_planes, planes, _, _ in blocks():
        shapes[f"{name}.conv1.weight"] = (planes, in_planes, 3, 3)
        shapes.update(bn(f"{name}.bn1", planes))
        shapes[f"{name}.conv2.weight"] = (planes, planes, 3, 3)
        shapes.update(bn(f"{name}.bn2", planes))
    shapes.update(bn("bn_final", 64))
    shapes["classifier.weight"] = (num_classes, 64)
    shapes["classifier.bias"] = (num_classes,)
    return shapes


def random_checkpoint(num_classes: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Tensor]:
    """A state dict with Mammoth's keys and random values of a sensible scale (BatchNorm statistics included)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in mammoth_shapes(num_classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123)
            continue
        u = torch.rand(shape, generator=generator, dtype=dtype)
        n = torch.randn(shape, generator=generator, dtype=dtype)
        if key.endswith("running_var"):
            state[key] = 0.5 + u
        elif ".bn" in key or key.startswith("bn_"):
            state[key] = 0.3 + 0.5 * u if key.endswith("weight") else 0.1 * n
        elif key.startswith("conv1") or ".conv" in key:
            state[key] = n * (2 / (shape[1] * 9)) ** 0.5
        else:
            state[key] = 0.1 * n
    return state


def batch_norm(state: dict[str, Tensor], name: str, h: Tensor, training: bool) -> Tensor:
    # Clones: in training mode F.batch_norm would update the statistics it is given.
    mean, var = state[f"{name}.running_mean"].clone(), state[f"{name}.running_var"].clone()
    return F.batch_norm(h, mean, var, state[f"{name}.weight"], state[f"{name}.bias"], training, 0.1, EPS)


def by_hand(state: dict[str, Tensor], x: Tensor, training: bool) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """(logits, features, [stem, layer1, layer2, layer3], the same with each stage before its final ReLU)."""
    h = batch_norm(state, "bn_initial", F.relu(F.conv2d(x, state["conv1.weight"], padding=1)), training)
    stages, pre_stages = [h], [h]  # the stem ends in its BatchNorm: nothing to stand before
    for name, _, planes, stride, last in blocks():
        out = F.conv2d(h, state[f"{name}.conv1.weight"], stride=stride, padding=1)
        out = batch_norm(state, f"{name}.bn1", F.relu(out), training)
        out = batch_norm(state, f"{name}.bn2", F.conv2d(out, state[f"{name}.conv2.weight"], padding=1), training)
        if stride == 1:
            shortcut = h
        else:
            kept = h[:, :, ::2, ::2]
            zeros = kept.new_zeros(kept.shape[0], planes // 4, *kept.shape[2:])
            shortcut = torch.cat([zeros, kept, zeros], dim=1)
        pre = out + shortcut
        h = pre if last else F.relu(pre)
        if name.endswith(".4"):
            stages.append(h)
            pre_stages.append(pre)
    features = F.avg_pool2d(h, 8).flatten(1)
    logits = F.linear(features, state["classifier.weight"], state["classifier.bias"])
    return logits, features, stages, pre_stages


def loaded(num_classes: int = 10, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[ResNet32, dict]:
    net = resnet32(num_classes).to(dtype)
    checkpoint = random_checkpoint(num_classes, dtype, seed)
    net.load_state_dict(checkpoint)
    return net, checkpoint


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_every_returnt_equals_the_forward_written_by_hand(training: bool) -> None:
    net, checkpoint = loaded()
    net.train(training)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits, features, stages, _ = by_hand(checkpoint, x, training)
    torch.testing.assert_close(net(x), logits)
    torch.testing.assert_close(net(x, returnt="features"), features)
    both = net(x, returnt="both")
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], features)
    full_logits, full_stages = net(x, returnt="full")
    torch.testing.assert_close(full_logits, logits)
    assert len(full_stages) == 4
    for got, expected in zip(full_stages, stages, strict=True):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(net.forward_features(x), stages[-1])
    # The last block has no ReLU: its map, like Mammoth's, takes negative values.
    assert bool((stages[-1] < 0).any())


def test_training_mode_updates_the_statistics_as_the_hand_written_forward() -> None:
    net, checkpoint = loaded()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    net.train()(x)
    stem = F.relu(F.conv2d(x, checkpoint["conv1.weight"], padding=1))
    mean, var = checkpoint["bn_initial.running_mean"].clone(), checkpoint["bn_initial.running_var"].clone()
    F.batch_norm(stem, mean, var, None, None, True, 0.1, EPS)
    torch.testing.assert_close(net.bn_initial.running_mean, mean)
    torch.testing.assert_close(net.bn_initial.running_var, var)
    assert int(net.bn_initial.num_batches_tracked) == 124
    # bn_final is never applied.
    assert torch.equal(net.bn_final.running_mean, checkpoint["bn_final.running_mean"])


def test_state_dict_keys_and_shapes_are_mammoths() -> None:
    expected = mammoth_shapes(100)
    state = resnet32(100).state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert len(expected) == 193


def test_a_mammoth_checkpoint_loads_strictly_and_gives_the_hand_written_logits() -> None:
    net = resnet32(100).eval()
    checkpoint = random_checkpoint(100, seed=3)
    assert str(net.load_state_dict(checkpoint, strict=True)) == "<All keys matched successfully>"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in checkpoint.items())
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    logits, features, _, _ = by_hand(checkpoint, x, training=False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), logits)
        torch.testing.assert_close(net(x, returnt="features"), features)
    # And it saves what Mammoth loads: the same keys, the same values.
    assert list(net.state_dict()) == list(checkpoint)


def test_a_checkpoint_saved_from_torch_compile_loads_too() -> None:
    checkpoint = {f"_orig_mod.{k}": v for k, v in random_checkpoint(10).items()}
    net = resnet32(10)
    net.load_state_dict(checkpoint)
    assert torch.equal(net.conv1.weight, checkpoint["_orig_mod.conv1.weight"])


def test_a_checkpoint_with_a_missing_or_extra_key_is_refused() -> None:
    checkpoint = random_checkpoint(10)
    del checkpoint["bn_final.weight"]
    with pytest.raises(RuntimeError, match=r"bn_final\.weight"):
        resnet32(10).load_state_dict(checkpoint)


def test_bn_final_is_kept_frozen_and_never_applied() -> None:
    net, _ = loaded()
    net.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = net(x)
    with torch.no_grad():
        net.bn_final.weight.mul_(-3)
        net.bn_final.bias.add_(5)
    assert torch.equal(net(x), before)
    assert not net.bn_final.weight.requires_grad and not net.bn_final.bias.requires_grad
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in net.named_parameters()} - {"bn_final.weight", "bn_final.bias"}
    net(x).sum().backward()
    assert net.bn_final.weight.grad is None
    assert get_grads(net).shape == (464_282,)  # zeros stand for the two frozen tensors


def test_parameter_counts() -> None:
    # stem 432 + bn 32; layer1 5 * (2 * 2304 + 64); layer2 (4608 + 9216 + 128) + 4 * (2 * 9216 + 128);
    # layer3 (18432 + 36864 + 256) + 4 * (2 * 36864 + 256); bn_final 128; classifier 64 * C + C.
    body = 432 + 32 + 5 * (2 * 2304 + 64) + (13_952 + 4 * 18_560) + (55_552 + 4 * 73_984) + 128
    assert body == 463_632
    assert sum(p.numel() for p in resnet32(100).parameters()) == body + 6_500 == 470_132
    assert sum(p.numel() for p in resnet32(10).parameters()) == body + 650 == 464_282
    assert sum(p.numel() for p in resnet32(100).parameters() if p.requires_grad) == 470_132 - 128


@pytest.mark.parametrize(("num_classes", "seed"), [(10, 0), (100, 4), (100, 9)])
def test_the_checker_passes_every_rule(num_classes: int, seed: int) -> None:
    # With the convolutions re-initialised He-normal (Mammoth's init), seeds 4 and 9 give untrained logits in the
    # hundreds, and float32 and float64 disagree beyond the float64 rule's tolerance.
    torch.manual_seed(seed)
    net = resnet32(num_classes)
    results = check_backbone(net, torch.randn(2, 3, 32, 32))
    assert [r.status for r in results] == ["pass"] * len(results)
    assert net.training and not net.return_prerelu


def test_the_checker_leaves_pre_activations_on_where_they_were_on() -> None:
    # The training-mode probe of the ReLU-then-BatchNorm stem switches the taps on and must switch them back
    # to what they were, on as well as off.
    torch.manual_seed(0)
    net = resnet32(10)
    net.set_return_prerelu(True)
    assert [r.status for r in check_backbone(net, torch.randn(2, 3, 32, 32))] == ["pass"] * len(CONTRACT_RULES)
    assert net.return_prerelu and net.training


def test_the_checker_passes_on_trained_weights_in_both_modes() -> None:
    net, _ = loaded(dtype=torch.float32)
    assert all(r.status == "pass" for r in check_backbone(net.eval(), torch.randn(3, 3, 32, 32)))
    assert not net.training


def test_the_checker_catches_a_set_return_prerelu_that_does_nothing() -> None:
    net = resnet32(10)
    net.set_return_prerelu = lambda enable=True: None  # type: ignore[method-assign]
    with pytest.raises(ContractError, match="stage 1 is unchanged and looks like a ReLU output"):
        check_backbone(net, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_prerelu_taps(training: bool) -> None:
    net, checkpoint = loaded()
    net.train(training)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    logits, _, stages, pre_stages = by_hand(checkpoint, x, training)
    net.set_return_prerelu(True)
    pre_logits, pre = net(x, returnt="full")
    torch.testing.assert_close(pre_logits, logits)
    for got, expected in zip(pre, pre_stages, strict=True):
        torch.testing.assert_close(got, expected)
    # layer1 and layer2 end in a ReLU; the stem (conv, ReLU, BN) and layer3 (no final ReLU) do not.
    torch.testing.assert_close(pre[1].relu(), stages[1])
    torch.testing.assert_close(pre[2].relu(), stages[2])
    assert bool((pre[1] < 0).any()) and bool((pre[2] < 0).any())
    torch.testing.assert_close(pre[0], stages[0])
    torch.testing.assert_close(pre[3], stages[3])
    assert net.layer1[-1].prerelu is pre[1] and net.layer2[-1].prerelu is pre[2] and net.layer3[-1].prerelu is pre[3]
    only = net.forward_intermediates(x, indices=[2, 0], intermediates_only=True)
    assert isinstance(only, list)
    torch.testing.assert_close(only[0], pre_stages[0])
    torch.testing.assert_close(only[1], pre_stages[2])
    final, early = net.forward_intermediates(x, indices=2, stop_early=False)
    torch.testing.assert_close(final, stages[3])
    torch.testing.assert_close(early[0], pre_stages[2])
    net.set_return_prerelu(False)
    _, post = net(x, returnt="full")
    for got, expected in zip(post, stages, strict=True):
        torch.testing.assert_close(got, expected)


def test_prerelu_costs_nothing_when_off_and_refuses_a_non_bool() -> None:
    net = resnet32(10)
    net(torch.randn(2, 3, 32, 32), returnt="full")
    assert not any(hasattr(m, "prerelu") for m in net.modules())
    with pytest.raises(TypeError, match="enable must be a bool, got int"):
        net.set_return_prerelu(1)  # type: ignore[arg-type]
    assert not net.return_prerelu


def test_feature_info_describes_the_full_stages() -> None:
    net = resnet32(10)
    assert net.feature_info == [
        {"num_chs": 16, "reduction": 1, "module": "bn_initial"},
        {"num_chs": 16, "reduction": 1, "module": "layer1"},
        {"num_chs": 32, "reduction": 2, "module": "layer2"},
        {"num_chs": 64, "reduction": 4, "module": "layer3"},
    ]
    assert net.feature_dim == net.num_features == 64
    _, stages = net(torch.randn(2, 3, 32, 32), returnt="full")
    assert [(s.shape[1], 32 // s.shape[-1]) for s in stages] == [
        (i["num_chs"], i["reduction"]) for i in net.feature_info
    ]
    # The inherited hook-based forward_intermediates finds the same tensors through feature_info.
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    final, hooked = MammothBackbone.forward_intermediates(net, x)
    own_final, own = net.forward_intermediates(x)
    assert torch.equal(final, own_final) and all(torch.equal(a, b) for a, b in zip(hooked, own, strict=True))


def test_other_image_sizes_pool_globally() -> None:
    net = resnet32(10).eval()
    x = torch.randn(2, 3, 64, 48)
    features = net(x, returnt="features")
    assert features.shape == (2, 64)
    torch.testing.assert_close(features, net.forward_features(x).mean(dim=(2, 3)))


def test_registered_name() -> None:
    assert "resnet32" in list_backbones()
    net = get_backbone("ResNet32", num_classes=100)
    assert isinstance(net, ResNet32) and net.num_classes == 100
    entry = registered("resnet32")
    assert entry.example_kwargs == {"num_classes": 10} and entry.example_input_shape == (3, 32, 32)
    with pytest.raises(TypeError, match="resnet32 accepts num_classes; got unexpected keyword arguments"):
        get_backbone("resnet32", num_classes=10, depth=20)


def test_the_classifier_grows_and_resets() -> None:
    net = resnet32(10)
    old = net.classifier.weight.detach().clone()
    grow_classifier(net, 200)
    assert net.num_classes == 200 and torch.equal(net.classifier.weight[:10], old)
    net.reset_classifier(5)
    assert net.num_classes == 5 and net(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(2, 1, 32, 32), ValueError, r"ResNet32 expects images \[B, 3, H, W\], got shape \(2, 1, 32, 32\)"),
        (torch.zeros(3, 32, 32), ValueError, r"expects images \[B, 3, H, W\], got shape \(3, 32, 32\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.long), TypeError, "expects a floating-point input, got torch.int64"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.float64), TypeError, "parameters' dtype torch.float32"),
    ],
)
def test_bad_inputs_are_refused_before_any_statistic_moves(x: Tensor, error: type, message: str) -> None:
    net = resnet32(10)
    for returnt in ("out", "features", "both", "full"):
        with pytest.raises(error, match=message):
            net(x, returnt=returnt)
    assert int(net.bn_initial.num_batches_tracked) == 0


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.0, "10"])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match=f"num_classes must be a positive int, got {num_classes!r}"):
        resnet32(num_classes)  # type: ignore[arg-type]


class _Delegate(MammothBackbone):
    """A backbone that keeps its pre-activation switch inside: it has no ``return_prerelu`` attribute."""

    def __init__(self, inner: MammothBackbone) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, returnt: str = "out") -> Any:
        return self.inner(x, returnt=returnt)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.inner.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.inner.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.inner.get_classifier()

    def set_return_prerelu(self, enable: bool = True) -> None:
        self.inner.set_return_prerelu(enable)


@pytest.mark.parametrize("which", ["resnet32", "mlp"])
def test_the_checker_leaves_a_switch_it_cannot_read_off(which: str) -> None:
    # Without a return_prerelu attribute the checker takes the switch to have been off, and leaves it off
    # after its probes: the ResNet-32 runs the training-mode one too (for its ReLU-then-BatchNorm stem), the
    # MLP only the first.
    torch.manual_seed(0)
    if which == "resnet32":
        net, x = _Delegate(resnet32(10)), torch.randn(2, 3, 32, 32)
    else:
        net, x = _Delegate(MNISTMLP(6, 3, hidden_size=5)), torch.randn(4, 6)
    results = check_backbone(net, x)
    assert {r.status for r in results} <= {"pass", "skip"}
    assert [r.status for r in results if "set_return_prerelu" in r.rule] == ["pass"]
    assert not any(getattr(m, "return_prerelu", False) for m in net.inner.modules())
    assert net.training
