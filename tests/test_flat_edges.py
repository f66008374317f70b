"""The flat operations at the edges: odd but legal modules, where the call must work and be exact."""

from __future__ import annotations

import warnings

import pytest
import torch
from nets import TinyNet
from torch import nn
from torch.nn.utils import parametrizations

import backbone
from backbone import flat


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- sparse gradients -------------------------------------------------------


def embedding_net() -> nn.Module:
    net = nn.Module()
    net.embedding = nn.Embedding(5, 2, sparse=True)
    net.linear = nn.Linear(2, 1)
    net.linear(net.embedding(torch.tensor([1, 1, 3]))).sum().backward()
    assert net.embedding.weight.grad is not None and net.embedding.weight.grad.is_sparse
    return net


def test_sparse_gradients_read_as_their_dense_value() -> None:
    net = embedding_net()
    dense = net.embedding.weight.grad.to_dense()  # sums the duplicate index 1
    expected = torch.cat([dense.reshape(-1), net.linear.weight.grad.reshape(-1), net.linear.bias.grad])
    assert torch.equal(backbone.get_grads(net), expected)
    assert torch.equal(backbone.get_grads(net, out=torch.empty(13)), expected)
    entries = backbone.get_grads_list(net)
    assert entries[0].layout == torch.strided and torch.equal(entries[0], dense.reshape(-1))
    assert torch.equal(flat._grads_list_fused(list(net.parameters()))[0], dense.reshape(-1))


def test_set_grads_creates_a_dense_gradient_where_a_sparse_one_was_cleared() -> None:
    net = embedding_net()
    net.zero_grad(set_to_none=True)
    backbone.set_grads(net, torch.arange(13.0))
    assert net.embedding.weight.grad.layout == torch.strided
    assert torch.equal(backbone.get_grads(net), torch.arange(13.0))


# --- missing gradients are never visible uninitialised ----------------------


def test_a_rejected_set_grads_creates_no_gradient() -> None:
    net = TinyNet()
    for bad in (torch.zeros(numel(net), device="meta"), torch.zeros(numel(net)).to_sparse()):
        with warnings.catch_warnings(), pytest.raises((TypeError, ValueError)):
            warnings.simplefilter("ignore")
            net.set_grads(bad)
        assert all(p.grad is None for p in net.parameters())


def test_a_created_gradient_is_attached_with_its_values() -> None:
    net = TinyNet()
    seen = []
    # A hook that reads .grad as the parameter is written: it must never see garbage.
    original = flat._copy_all

    def spying_copy(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
        seen.extend(p.grad for p in net.parameters())
        original(destinations, sources)

    flat._copy_all = spying_copy  # type: ignore[assignment]
    try:
        net.set_grads(torch.arange(float(numel(net))))
    finally:
        flat._copy_all = original  # type: ignore[assignment]
    assert all(grad is None for grad in seen)  # nothing attached before its values were known
    assert torch.equal(net.get_grads(), torch.arange(float(numel(net))))


# --- inference mode ---------------------------------------------------------


def test_set_grads_inside_inference_mode_leaves_normal_tensors_that_backward_can_use() -> None:
    net = TinyNet()
    with torch.inference_mode():
        net.set_grads(torch.ones(numel(net)))
        net.set_params(net.get_params() * 0 + 0.5)
    assert not any(p.grad.is_inference() for p in net.parameters())
    net(torch.ones(2, 4)).sum().backward()  # accumulates into the gradients set above
    assert all((p.grad != 1).any() for p in net.parameters() if p.requires_grad)


def test_parameters_made_in_inference_mode_can_be_written_there() -> None:
    with torch.inference_mode():
        layer = nn.Linear(3, 2)
        backbone.set_params(layer, torch.arange(8.0))
        assert torch.equal(backbone.get_params(layer), torch.arange(8.0))


# --- memory overlap ---------------------------------------------------------


class ViewsOfOneBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.storage = torch.arange(20.0)
        self.a = nn.Parameter(self.storage[0:6].view(2, 3))
        self.b = nn.Parameter(self.storage[6:8])


@pytest.mark.parametrize("shift", [0, 1, 3, 7, 12])
def test_set_params_from_the_parameters_own_buffer_copies_through_a_temporary(shift: int) -> None:
    net = ViewsOfOneBuffer()
    source = net.storage[shift : shift + 8]
    expected = source.clone()
    backbone.set_params(net, source)
    assert torch.equal(backbone.get_params(net).detach(), expected)


def test_set_grads_from_the_gradients_own_buffer() -> None:
    net = ViewsOfOneBuffer()
    grads = torch.arange(10.0)
    net.a.grad, net.b.grad = grads[2:8].view(2, 3), grads[8:10]
    expected = grads[0:8].clone()
    backbone.set_grads(net, grads[0:8])
    assert torch.equal(backbone.get_grads(net), expected)


def test_out_next_to_the_parameters_in_one_buffer_is_fine() -> None:
    net = ViewsOfOneBuffer()
    out = net.storage[8:16]
    assert torch.equal(backbone.get_params(net, out=out), torch.arange(8.0))


# --- get_grads_list owns its memory -----------------------------------------


def test_get_grads_list_copies_a_grad_whose_reshape_would_be_a_view() -> None:
    layer = nn.Linear(2, 2)
    layer.weight.grad = torch.arange(8.0)[::2].view(2, 2)  # not contiguous; reshape(-1) is a view
    assert layer.weight.grad.reshape(-1)._base is not None
    for entries in (backbone.get_grads_list(layer), flat._grads_list_fused(list(layer.parameters()))):
        entries[0].fill_(-1)
        assert torch.equal(layer.weight.grad, torch.tensor([[0.0, 2.0], [4.0, 6.0]]))


def test_the_accelerator_strategy_splits_in_parameter_order() -> None:
    net = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    net(torch.ones(1, 3)).sum().backward()
    fused = flat._grads_list_fused(list(net.parameters()))
    assert [e.numel() for e in fused] == [15, 5, 10, 2]
    for p, entry in zip(net.parameters(), fused, strict=True):
        assert torch.equal(entry, p.grad.reshape(-1))


def test_get_grads_list_uses_the_fused_strategy_only_on_accelerators() -> None:
    params = list(TinyNet().parameters())
    assert not flat._fused(params)
    assert flat._fused(list(TinyNet().to("meta").parameters()))


# --- xavier -----------------------------------------------------------------


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    with torch.no_grad():
        return (layer(torch.eye(layer.in_features)) - layer(torch.zeros(1, layer.in_features))).T


def old_weight_norm(layer: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(layer)


@pytest.mark.parametrize(
    "wrap",
    [lambda layer: layer, parametrizations.weight_norm, old_weight_norm],
    ids=["plain", "parametrizations.weight_norm", "weight_norm"],
)
def test_xavier_makes_the_effective_weight_glorot_uniform(wrap) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    layer = wrap(nn.Linear(200, 100))
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(3.0)
    backbone.xavier(layer)
    weight = effective_weight(layer)
    bound = (6 / 300) ** 0.5
    assert weight.abs().max() <= bound * (1 + 1e-5)
    # Uniform on [-bound, bound]: standard deviation bound / sqrt(3), mean 0.
    assert abs(weight.std().item() - bound / 3**0.5) < 0.01 * bound
    assert abs(weight.mean().item()) < 0.01 * bound
    assert torch.equal(layer(torch.zeros(1, 200)), torch.zeros(1, 100))  # bias zeroed


def test_xavier_on_a_layer_without_elements_zeroes_the_bias() -> None:
    layer = nn.Linear(0, 3)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    backbone.xavier(layer)
    assert torch.equal(layer.bias, torch.zeros(3))
    backbone.xavier(nn.Linear(0, 0))


def test_a_successful_call_never_builds_parameter_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are for error messages: walking named_parameters() per parameter is quadratic."""

    def refuse(module: nn.Module, index: int) -> str:
        raise AssertionError("_name called on a successful call")

    monkeypatch.setattr(flat, "_name", refuse)
    net = TinyNet()
    net.set_params(torch.zeros(numel(net)))
    net.set_grads(torch.zeros(numel(net)))
    net.get_grads(out=torch.empty(numel(net)))
    net.get_params(out=torch.empty(numel(net)))
    net.get_grads_list()
