"""Promises of MammothBackbone's docstrings and docs, checked through the public API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from nets import TinyNet
from torch import Tensor, nn

from backbone import MNISTMLP, MammothBackbone, check_returnt, feature_take_indices


def raises_exactly(error: type[Exception], message: str, call: Callable[[], object]) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


# Checkpoints saved from a compiled backbone (docs/scaling.rst, "torch.compile").


def zeroed(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return net


def test_a_compiled_checkpoint_loads_strictly_with_every_value() -> None:
    source = MNISTMLP(4, 2, hidden_size=3)
    state = torch.compile(source).state_dict()
    assert all(key.startswith("_orig_mod.") for key in state)
    target = zeroed(MNISTMLP(4, 2, hidden_size=3))
    result = target.load_state_dict(state)  # strict
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    assert torch.equal(target.get_params(), source.get_params())
    assert list(target.state_dict()) == list(source.state_dict())


def test_a_compiled_checkpoint_loads_into_a_backbone_inside_a_model() -> None:
    source = nn.Sequential()
    source.add_module("net", torch.compile(MNISTMLP(4, 2, hidden_size=3)))
    state = source.state_dict()
    assert all(key.startswith("net._orig_mod.") for key in state)
    target = nn.Sequential()
    target.add_module("net", zeroed(MNISTMLP(4, 2, hidden_size=3)))
    target.load_state_dict(state)  # strict
    assert torch.equal(target.net.get_params(), source.net.get_params())


def test_a_plain_checkpoint_still_loads() -> None:
    source = MNISTMLP(4, 2, hidden_size=3)
    target = zeroed(MNISTMLP(4, 2, hidden_size=3))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.get_params(), source.get_params())


# reset_classifier: "on the old one's device and dtype" (else where the backbone is).


def test_reset_classifier_takes_the_old_classifiers_dtype_not_the_backbones() -> None:
    net = MNISTMLP(4, 2, hidden_size=3)
    net.classifier.double()  # the body stays float32
    net.reset_classifier(5)
    head = net.get_classifier()
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (3, 5)
    assert head.weight.dtype == torch.float64 and head.bias.dtype == torch.float64
    assert next(net.fc1.parameters()).dtype == torch.float32


def test_reset_classifier_after_removing_it_takes_the_backbones_dtype() -> None:
    net = TinyNet().double()
    net.reset_classifier(0)
    assert isinstance(net.get_classifier(), nn.Identity) and net.num_classes == 0
    net.reset_classifier(4)
    head = net.get_classifier()
    assert isinstance(head, nn.Linear) and head.weight.dtype == torch.float64 and net.num_classes == 4
    x = torch.randn(2, 4, dtype=torch.float64)
    assert net(x).shape == (2, 4) and net(x).dtype == torch.float64


class Headless(MammothBackbone):
    """A backbone with a body and no classifier at all."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.feature_dim = 3

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def test_reset_classifier_adds_a_head_to_a_backbone_without_one() -> None:
    net = Headless().double()
    net.reset_classifier(2)
    head = net.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (3, 2)
    assert head.weight.dtype == torch.float64
    assert net.num_classes == 2
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(net(x), head(net.body(x)))


class ParameterFree(MammothBackbone):
    """A backbone without any parameter or buffer: its features are its input."""

    def __init__(self, with_identity_head: bool) -> None:
        super().__init__()
        if with_identity_head:
            self.classifier = nn.Identity()
        self.feature_dim = 4

    def forward_features(self, x: Tensor) -> Tensor:
        return x


def test_reset_classifier_on_a_parameter_free_backbone_uses_torchs_defaults() -> None:
    for with_identity_head in (True, False):
        net = ParameterFree(with_identity_head)
        net.reset_classifier(3)
        head = net.get_classifier()
        assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (4, 3)
        assert head.weight.dtype == torch.get_default_dtype() and head.weight.device == torch.device("cpu")
        assert net.num_classes == 3


# forward_head: "averages over every dimension after the second; a [B, D] input is left as it is".


def test_forward_head_pools_every_dimension_after_the_second() -> None:
    net = MNISTMLP(4, 2, hidden_size=3)
    head = net.get_classifier()
    generator = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (5, 3, 7), (5, 3, 2, 6), (2, 3, 2, 2, 3)]:
        x = torch.randn(*shape, generator=generator)
        pooled = x.reshape(shape[0], shape[1], -1).mean(dim=2) if len(shape) > 2 else x
        features = net.forward_head(x, pre_logits=True)
        assert features.shape == (shape[0], 3)
        torch.testing.assert_close(features, pooled)
        torch.testing.assert_close(net.forward_head(x), head(pooled))
    x = torch.randn(5, 3, generator=generator)
    assert net.forward_head(x, pre_logits=True) is x


class Conv1dNet(MammothBackbone):
    """A backbone whose final output is a [B, C, L] sequence map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.classifier = nn.Linear(3, 4)
        self.feature_dim = 3
        self.feature_info = [{"num_chs": 3, "reduction": 1, "module": "conv"}]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv(x)  # type: ignore[no-any-return]


def test_every_returnt_pools_a_sequence_map() -> None:
    net = Conv1dNet()
    x = torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(1))
    final = net.conv(x)
    features = final.mean(dim=2)
    logits = net.classifier(features)
    torch.testing.assert_close(net(x), logits)
    torch.testing.assert_close(net(x, returnt="features"), features)
    both = net(x, returnt="both")
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], features)
    full_logits, stages = net(x, returnt="full")
    torch.testing.assert_close(full_logits, logits)
    assert len(stages) == 1
    torch.testing.assert_close(stages[0], final)


# Exact messages of the documented errors.

RETURNT_MESSAGE = "returnt must be one of 'out', 'features', 'both', 'full'; got "


@pytest.mark.parametrize("value", ["all", "OUT", "", None, 3, ("out",)])
def test_check_returnt_rejects_with_the_documented_message(value: object) -> None:
    raises_exactly(ValueError, RETURNT_MESSAGE + repr(value), lambda: check_returnt(value))


@pytest.mark.parametrize("value", ["out", "features", "both", "full"])
def test_check_returnt_returns_a_valid_value_unchanged(value: str) -> None:
    assert check_returnt(value) is value


def test_forward_rejects_a_bad_returnt_with_the_documented_message() -> None:
    net = TinyNet()
    raises_exactly(ValueError, RETURNT_MESSAGE + "'logits'", lambda: net(torch.zeros(1, 4), returnt="logits"))


@pytest.mark.parametrize(("x", "got"), [(None, "NoneType"), ([1.0, 2.0], "list"), (3.0, "float")])
def test_forward_names_the_backbone_and_the_type_of_a_non_tensor_input(x: object, got: str) -> None:
    net = TinyNet()
    raises_exactly(TypeError, f"TinyNet expects the input batch x to be a torch.Tensor, got {got}", lambda: net(x))


@pytest.mark.parametrize(
    ("indices", "expected"),
    [
        (None, [0, 1, 2, 3, 4]),
        (1, [4]),
        (2, [3, 4]),
        (5, [0, 1, 2, 3, 4]),
        ([0], [0]),
        ([4], [4]),
        ([-1], [4]),
        ([-5], [0]),
        ([0, -1], [0, 4]),
        ([1, 3], [1, 3]),
        ((-2, 2), [3, 2]),
    ],
)
def test_feature_take_indices_selects_as_timm_does(indices: int | list[int] | None, expected: list[int]) -> None:
    assert feature_take_indices(5, indices) == (expected, max(expected))


@pytest.mark.parametrize(
    ("indices", "error", "message"),
    [
        ("1", TypeError, "indices must be None, an int or a sequence of ints, got str"),
        (True, TypeError, "indices must be None, an int or a sequence of ints, got bool"),
        (1.0, TypeError, "indices must be None, an int or a sequence of ints, got float"),
        ({1: 2}, TypeError, "indices must be None, an int or a sequence of ints, got dict"),
        ([1.0], TypeError, "indices must be ints, got float 1.0"),
        ([0, True], TypeError, "indices must be ints, got bool True"),
        ([None], TypeError, "indices must be ints, got NoneType None"),
        (0, ValueError, "indices as a last-n count must be from 1 to 5, got 0"),
        (-1, ValueError, "indices as a last-n count must be from 1 to 5, got -1"),
        (6, ValueError, "indices as a last-n count must be from 1 to 5, got 6"),
        ([5], ValueError, "stage index must be from -5 to 4, got 5"),
        ([0, -6], ValueError, "stage index must be from -5 to 4, got -6"),
        ([], ValueError, "indices must select at least one stage, got an empty sequence"),
        ((), ValueError, "indices must select at least one stage, got an empty sequence"),
    ],
)
def test_feature_take_indices_rejects_with_the_documented_message(
    indices: object, error: type[Exception], message: str
) -> None:
    raises_exactly(error, message, lambda: feature_take_indices(5, indices))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        (1.5, TypeError, "device must be a torch.device, a str such as 'cuda:0' or an int, got float"),
        (True, TypeError, "device must be a torch.device, a str such as 'cuda:0' or an int, got bool"),
        (None, TypeError, "device must be a torch.device, a str such as 'cuda:0' or an int, got NoneType"),
        ("bogus", ValueError, "device must name a device such as 'cpu', 'cuda' or 'cuda:1', got 'bogus'"),
    ],
)
def test_a_bad_device_is_rejected_with_the_documented_message(
    device: object, error: type[Exception], message: str
) -> None:
    raises_exactly(error, message, lambda: MammothBackbone(device=device))  # type: ignore[arg-type]


def test_the_device_of_a_backbone_without_parameters_is_the_one_it_was_given() -> None:
    assert MammothBackbone().device == torch.device("cpu")
    assert MammothBackbone(device="meta").device == torch.device("meta")
    assert MammothBackbone(device=torch.device("meta")).device == torch.device("meta")


# A head with its own classifying step changes the logits of every returnt (the class docstring).


class ScaledHead(TinyNet):
    """Pools as the inherited head does, then classifies and doubles the logits."""

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        features = super().forward_head(x, pre_logits=True)
        return features if pre_logits else 2 * self.classifier(features)


def test_an_overridden_head_gives_the_logits_of_every_returnt() -> None:
    net = ScaledHead().eval()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    features = net.forward_features(x)
    logits = 2 * net.classifier(features)
    torch.testing.assert_close(net(x), logits)
    torch.testing.assert_close(net(x, returnt="features"), features)
    both = net(x, returnt="both")
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], features)
    full_logits, stages = net(x, returnt="full")
    torch.testing.assert_close(full_logits, logits)
    torch.testing.assert_close(stages[1], features)
    torch.testing.assert_close(net.features(x), features)


# The flat-vector methods are backbone.flat's functions on the backbone itself.


def test_get_params_and_get_grads_write_into_out_and_return_it() -> None:
    net = MNISTMLP(4, 2, hidden_size=3)
    net(torch.ones(5, 4)).sum().backward()
    expected_params = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    expected_grads = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None])
    params_buffer = torch.full((35,), float("nan"))
    assert net.get_params(out=params_buffer) is params_buffer
    assert torch.equal(params_buffer, expected_params)
    grads_buffer = torch.full((35,), float("nan"))
    assert net.get_grads(out=grads_buffer) is grads_buffer
    assert torch.equal(grads_buffer, expected_grads)
    assert torch.equal(net.get_params(), expected_params) and torch.equal(net.get_grads(), expected_grads)


def test_set_params_set_grads_and_get_grads_list_act_on_the_backbone() -> None:
    net = MNISTMLP(4, 2, hidden_size=3)
    values = torch.arange(35, dtype=torch.float32)
    net.set_params(values)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in net.parameters()]), values)
    net.set_grads(2 * values)
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None]), 2 * values)
    grads = net.get_grads_list()
    assert [g.numel() for g in grads] == [12, 3, 9, 3, 6, 2]
    assert torch.equal(torch.cat(grads), 2 * values)
