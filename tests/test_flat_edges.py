"""The flat operations at the edges: odd but legal modules, where the call must work and be exact."""

from __future__ import annotations

import warnings

import pytest
import torch
from nets import TinyNet
from torch import nn
from torch.nn.utils import parametrizations
from torch.overrides import TorchFunctionMode

import backbone


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
    seen: list[tuple[int, torch.Tensor]] = []

    class Spy(TorchFunctionMode):
        """Reads every .grad at each torch call made while set_grads runs."""

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            # The mode is off inside its own handler, so these reads are not seen.
            seen.extend((i, p.grad.clone()) for i, p in enumerate(net.parameters()) if p.grad is not None)
            return func(*args, **(kwargs or {}))

    with Spy():
        net.set_grads(torch.arange(float(numel(net))))
    final = [p.grad for p in net.parameters()]
    assert seen  # some gradients were seen attached before the call returned
    for i, grad in seen:  # and each already held its values: no uninitialised memory was ever visible
        assert torch.equal(grad, final[i])
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
    entries = backbone.get_grads_list(layer)
    entries[0].fill_(-1)
    assert torch.equal(layer.weight.grad, torch.tensor([[0.0, 2.0], [4.0, 6.0]]))


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
