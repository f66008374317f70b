"""Flat parameter and gradient vectors."""

from __future__ import annotations

import pytest
import torch
from nets import ConvNet, TiedFrozenUnused, TinyNet, assert_unchanged, snapshot
from torch import nn

import backbone
from backbone import MammothBackbone


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def reference_params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def reference_grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in net.parameters()])


def backward(net: nn.Module, x: torch.Tensor | None = None) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) if x is None else x
    net(x).square().sum().backward()


# --- get_params ------------------------------------------------------------


def test_get_params_order_and_length() -> None:
    net = TinyNet()
    flat = net.get_params()
    assert flat.dim() == 1
    assert torch.equal(flat, reference_params(net))


def test_get_params_is_differentiable_for_an_ewc_penalty() -> None:
    net = TinyNet()
    anchor = net.get_params().detach() - 1.0
    ((net.get_params() - anchor) ** 2).sum().backward()
    # d/dp (p - (p - 1))^2 = 2
    torch.testing.assert_close(net.get_grads(), torch.full((numel(net),), 2.0))


def test_get_params_out_writes_into_the_buffer_without_graph() -> None:
    net = TinyNet()
    buffer = torch.full((numel(net),), float("nan"))
    result = net.get_params(out=buffer)
    assert result is buffer
    assert torch.equal(buffer, reference_params(net))
    assert buffer.grad_fn is None and not buffer.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64, torch.bool])
def test_out_of_another_dtype_is_refused_not_truncated(dtype: torch.dtype) -> None:
    net = TinyNet()
    buffer = torch.zeros(numel(net), dtype=dtype)
    for getter in (net.get_params, net.get_grads):
        with pytest.raises(TypeError, match=f"out must have the result's dtype torch.float32, got {dtype}"):
            getter(out=buffer)
    assert not buffer.any()


def test_get_params_tied_once_and_frozen_included() -> None:
    net = TiedFrozenUnused()
    expected = 16 + 4 + 4 + (16 + 4) + (28 + 7) + (8 + 2)
    assert net.get_params().numel() == expected
    # The tied weight appears once, at its first name's place, and frozen parameters are in.
    pieces, seen = [], set()
    for _, module in net.named_modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                pieces.append(p.detach().flatten())
    assert torch.equal(net.get_params(), torch.cat(pieces))


def test_get_params_of_a_parameterless_backbone_is_empty() -> None:
    assert MammothBackbone().get_params().shape == (0,)
    assert MammothBackbone().get_grads().shape == (0,)


# --- set_params ------------------------------------------------------------


def test_set_params_round_trip() -> None:
    net = TinyNet()
    target = torch.arange(numel(net), dtype=torch.float32)
    net.set_params(target)
    assert torch.equal(net.get_params().detach(), target)


def test_set_params_keeps_parameter_identity_and_optimizer_state() -> None:
    net = TinyNet()
    before = list(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net.set_params(torch.ones(numel(net)))
    assert all(a is b for a, b in zip(before, net.parameters(), strict=True))
    net(torch.ones(1, 4)).sum().backward()
    opt.step()
    # The optimizer still holds the live parameters, so the step moved them.
    assert not torch.equal(net.get_params().detach(), torch.ones(numel(net)))


def test_set_params_does_not_alias_the_callers_tensor() -> None:
    net = TinyNet()
    source = torch.zeros(numel(net))
    net.set_params(source)
    source.add_(5.0)
    assert torch.equal(net.get_params().detach(), torch.zeros(numel(net)))
    with torch.no_grad():
        net.stage1.weight.add_(1.0)
    assert torch.equal(source, torch.full((numel(net),), 5.0))


def test_set_params_converts_dtype() -> None:
    net = TinyNet()
    net.set_params(torch.ones(numel(net), dtype=torch.float64))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.get_params().detach(), torch.ones(numel(net)))


def test_set_params_reaches_both_ends_of_a_tie() -> None:
    net = TiedFrozenUnused()
    net.set_params(torch.arange(numel(net), dtype=torch.float32))
    assert net.decoder.weight is net.encoder.weight
    assert torch.equal(net.decoder.weight.reshape(-1), torch.arange(16.0))


def test_set_params_accepts_a_strided_vector() -> None:
    net = TinyNet()
    source = torch.arange(2 * numel(net), dtype=torch.float32)[::2]
    net.set_params(source)
    assert torch.equal(net.get_params().detach(), source)


def test_set_params_works_with_requires_grad_input() -> None:
    net = TinyNet()
    source = torch.linspace(-1, 1, numel(net), requires_grad=True)
    net.set_params(source)
    assert all(p.grad_fn is None and p.is_leaf for p in net.parameters())
    assert torch.equal(net.get_params(), source.detach())
    assert source.grad is None


# --- get_grads ---------------------------------------------------------------


def test_get_grads_zeros_before_any_backward() -> None:
    net = TinyNet()
    assert torch.equal(net.get_grads(), torch.zeros(numel(net)))


def test_get_grads_matches_reference_after_backward() -> None:
    net = TinyNet()
    backward(net)
    grads = net.get_grads()
    assert torch.equal(grads, reference_grads(net))
    assert not grads.requires_grad


def test_get_grads_is_a_copy() -> None:
    net = TinyNet()
    backward(net)
    grads = net.get_grads()
    saved = grads.clone()
    grads.fill_(7.0)
    assert torch.equal(reference_grads(net), saved)


def test_get_grads_zeros_for_frozen_and_unused_parameters() -> None:
    net = TiedFrozenUnused()
    backward(net)
    assert net.frozen.weight.grad is None and net.unused.weight.grad is None
    assert net.encoder.weight.grad is not None
    grads = net.get_grads()
    assert torch.equal(grads, reference_grads(net))
    pieces = dict(
        zip(
            [n for n, _ in net.named_parameters()],
            torch.split(grads, [p.numel() for p in net.parameters()]),
            strict=True,
        )
    )
    assert torch.equal(pieces["frozen.weight"], torch.zeros(16))
    assert torch.equal(pieces["unused.bias"], torch.zeros(7))
    assert pieces["encoder.weight"].abs().sum() > 0


def test_get_grads_out() -> None:
    net = TiedFrozenUnused()
    backward(net)
    buffer = torch.full((numel(net),), float("nan"))
    assert net.get_grads(out=buffer) is buffer
    assert torch.equal(buffer, reference_grads(net))


def test_channels_last_gradients_are_flattened_in_logical_order() -> None:
    net = ConvNet().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    net(x).square().sum().backward()
    grad = net.conv.weight.grad
    assert grad is not None and not grad.is_contiguous()
    expected = torch.cat([p.grad.contiguous().view(-1) for p in net.parameters()])
    assert torch.equal(net.get_grads(), expected)
    assert torch.equal(net.get_grads(out=torch.empty(numel(net))), expected)
    assert torch.equal(torch.cat(net.get_grads_list()), expected)
    assert torch.equal(
        net.get_params().detach(), torch.cat([p.detach().contiguous().view(-1) for p in net.parameters()])
    )


def test_set_grads_into_channels_last_gradients() -> None:
    net = ConvNet().to(memory_format=torch.channels_last)
    net(torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)).sum().backward()
    target = torch.arange(numel(net), dtype=torch.float32)
    net.set_grads(target)
    assert torch.equal(net.get_grads(), target)


# --- set_grads ---------------------------------------------------------------


def test_set_grads_creates_missing_grads_in_the_parameters_dtype() -> None:
    net = TinyNet().double()
    target = torch.arange(numel(net), dtype=torch.float32)
    net.set_grads(target)
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float64 and p.grad.shape == p.shape
    assert torch.equal(net.get_grads(), target.double())


def test_set_grads_overwrites_existing_grads_in_place() -> None:
    net = TinyNet()
    backward(net)
    grad_objects = [p.grad for p in net.parameters()]
    net.set_grads(torch.zeros(numel(net)))
    assert all(p.grad is g for p, g in zip(net.parameters(), grad_objects, strict=True))
    assert torch.equal(net.get_grads(), torch.zeros(numel(net)))


def test_set_grads_does_not_alias_the_callers_tensor() -> None:
    net = TinyNet()
    source = torch.ones(numel(net))
    net.set_grads(source)
    backward(net)  # accumulates into .grad
    assert torch.equal(source, torch.ones(numel(net)))
    source.mul_(3.0)
    assert not torch.equal(net.get_grads(), source)


@pytest.mark.parametrize("write", ["set_grads", "add_grads"])
@pytest.mark.parametrize("grads_exist", [False, True])
def test_gradients_written_from_a_vector_with_a_graph_are_plain_data(write: str, grads_exist: bool) -> None:
    net = TinyNet()
    if grads_exist:
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
    leaf = torch.randn(numel(net), requires_grad=True)
    getattr(backbone, write)(net, leaf * 1.5)
    for p in net.parameters():
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad
    assert torch.equal(backbone.get_grads(net), (leaf * 1.5).detach())


@pytest.mark.parametrize("write", ["set_grads", "add_grads"])
def test_an_existing_gradient_that_carries_a_graph_is_replaced_by_plain_data(write: str) -> None:
    net = TinyNet()
    loss = net(torch.randn(3, 4)).square().sum()
    grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g  # what backward(create_graph=True) leaves
    before = torch.cat([g.detach().reshape(-1) for g in grads])
    vector = torch.randn(numel(net))
    getattr(backbone, write)(net, vector)
    for p in net.parameters():
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad
    expected = vector if write == "set_grads" else before + vector
    assert torch.allclose(backbone.get_grads(net), expected)


def test_set_grads_then_backward_accumulates() -> None:
    net = TinyNet()
    x = torch.randn(3, 4)
    backward(net, x)
    once = net.get_grads()
    net.zero_grad()
    net.set_grads(once)
    backward(net, x)
    torch.testing.assert_close(net.get_grads(), 2 * once)


def test_get_grads_list_matches_get_grads() -> None:
    net = TiedFrozenUnused()
    backward(net)
    grads = net.get_grads_list()
    assert [g.shape for g in grads] == [(p.numel(),) for p in net.parameters()]
    assert torch.equal(torch.cat(grads), net.get_grads())
    grads[0].fill_(99.0)
    assert not torch.equal(net.encoder.weight.grad.reshape(-1), grads[0])


def test_module_functions_work_on_plain_modules() -> None:
    layer = nn.Linear(3, 2)
    backbone.set_params(layer, torch.arange(8.0))
    assert torch.equal(backbone.get_params(layer).detach(), torch.arange(8.0))
    backbone.set_grads(layer, torch.arange(8.0))
    assert torch.equal(backbone.get_grads(layer), torch.arange(8.0))


# --- bad input: clear errors, nothing changed --------------------------------


def _net_with_grads() -> TiedFrozenUnused:
    net = TiedFrozenUnused()
    backward(net)
    return net


BAD_VECTORS = [
    pytest.param(lambda n: [0.0] * n, TypeError, "must be a torch.Tensor, got list", id="list"),
    pytest.param(lambda n: None, TypeError, "must be a torch.Tensor, got NoneType", id="none"),
    pytest.param(lambda n: torch.zeros(n + 1), ValueError, "elements", id="too-long"),
    pytest.param(lambda n: torch.zeros(n - 1), ValueError, "elements", id="too-short"),
    pytest.param(lambda n: torch.zeros(1, n), ValueError, r"1-D tensor, got shape \(1, ", id="2-d"),
    pytest.param(lambda n: torch.tensor(1.0), ValueError, r"1-D tensor, got shape \(\)", id="0-d"),
    pytest.param(lambda n: torch.zeros(n, dtype=torch.complex64), TypeError, "cannot be cast", id="complex"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_VECTORS)
@pytest.mark.parametrize("method", ["set_params", "set_grads"])
def test_setters_reject_bad_vectors_and_change_nothing(make, error, message, method) -> None:  # type: ignore[no-untyped-def]
    net = _net_with_grads()
    before = snapshot(net)
    with pytest.raises(error, match=message):
        getattr(net, method)(make(numel(net)))
    assert_unchanged(net, before)


def test_wrong_length_message_names_both_numbers() -> None:
    net = TinyNet()
    n = numel(net)
    with pytest.raises(ValueError, match=f"must have {n} elements .*got {n + 3}"):
        net.set_params(torch.zeros(n + 3))


@pytest.mark.parametrize("method", ["get_params", "get_grads"])
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda n: torch.zeros(n + 1), ValueError),
        (lambda n: torch.zeros(n, 1), ValueError),
        (lambda n: [0.0] * n, TypeError),
    ],
)
def test_getters_reject_bad_out_and_change_nothing(method, make, error) -> None:  # type: ignore[no-untyped-def]
    net = _net_with_grads()
    before = snapshot(net)
    out = make(numel(net))
    out_before = out.clone() if isinstance(out, torch.Tensor) else list(out)
    with pytest.raises(error, match="out"):
        getattr(net, method)(out=out)
    assert_unchanged(net, before)
    if isinstance(out, torch.Tensor):
        assert torch.equal(out, out_before)


@pytest.mark.parametrize("function", ["get_params", "get_grads", "get_grads_list"])
def test_functions_reject_non_modules(function: str) -> None:
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got Tensor"):
        getattr(backbone, function)(torch.zeros(3))


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_grads_from_create_graph_come_back_detached() -> None:
    net = TinyNet()
    net(torch.randn(3, 4)).square().sum().backward(create_graph=True)
    assert net.stage1.weight.grad is not None and net.stage1.weight.grad.requires_grad
    assert not net.get_grads().requires_grad
    assert not any(g.requires_grad for g in net.get_grads_list())
    net.zero_grad(set_to_none=True)  # break the cycle the warning is about


def test_set_grads_creates_missing_grads_in_the_parameters_memory_format() -> None:
    net = ConvNet().to(memory_format=torch.channels_last)
    assert net.conv.weight.grad is None
    net.set_grads(torch.arange(float(numel(net))))
    grad = net.conv.weight.grad
    assert grad is not None and grad.stride() == net.conv.weight.stride()
    assert grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(net.get_grads(), torch.arange(float(numel(net))))


def test_add_grads_gives_an_ewc_penalty_its_gradient_without_autograd() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    anchor = net.get_params().detach() + torch.randn(numel(net)) * 0.1
    importance = torch.rand(numel(net))
    x = torch.randn(3, 4)
    # The autograd way: the penalty built from get_params().
    (net(x).sum() + (importance * (net.get_params() - anchor) ** 2).sum()).backward()
    expected = net.get_grads()
    net.zero_grad()
    # The direct way: the penalty's gradient added into .grad.
    net(x).sum().backward()
    theta = net.get_params(out=torch.empty(numel(net)))
    backbone.add_grads(net, importance * (theta - anchor), alpha=2.0)
    torch.testing.assert_close(net.get_grads(), expected)


def test_add_grads_creates_zero_based_gradients_and_fisher_accumulates_in_place() -> None:
    net = TinyNet()
    backbone.add_grads(net, torch.ones(numel(net)), alpha=3)
    assert torch.equal(net.get_grads(), torch.full((numel(net),), 3.0))
    fisher, buffer = torch.zeros(numel(net)), torch.empty(numel(net))
    for _ in range(2):
        fisher.addcmul_(net.get_grads(out=buffer), buffer)  # no allocation per step
    assert torch.equal(fisher, torch.full((numel(net),), 18.0))
