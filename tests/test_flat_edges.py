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
    assert torch.equal(net.get_params(), torch.full((numel(net),), 0.5))
    assert torch.equal(net.get_grads(), torch.ones(numel(net)))
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


# --- found by red-teaming the flat operations ----------------------------------


def test_out_over_a_sparse_gradients_values_is_refused() -> None:
    e = nn.Embedding(2, 2, sparse=True)
    e(torch.tensor([0, 1])).sum().backward()
    values = e.weight.grad._values()
    before = values.clone()
    with pytest.raises(ValueError, match="overlaps the gradient of parameter 'weight'"):
        backbone.get_params(e, out=values.view(-1))
    assert torch.equal(values, before)


def test_out_over_a_sparse_gradients_indices_is_refused() -> None:
    # The indices are memory of the gradient too: a float view of them is refused as out=.
    layer = nn.Linear(2, 2, bias=False)
    layer.weight.grad = torch.eye(2).to_sparse()
    indices = layer.weight.grad._indices()
    before = indices.clone()
    with pytest.raises(ValueError, match="overlaps the gradient of parameter 'weight'"):
        backbone.get_params(layer, out=indices.view(torch.float32).view(-1)[:4])
    assert torch.equal(indices, before)


def test_add_grads_into_integer_gradients_takes_an_int_alpha_and_refuses_a_float_one() -> None:
    m = nn.Module()
    m.a = nn.Parameter(torch.zeros(2))
    m.b = nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)
    m.a.grad, m.b.grad = torch.zeros(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match=r"alpha must be an int to add into torch\.int64 gradients"):
        backbone.add_grads(m, torch.ones(4, dtype=torch.long), alpha=1.5)
    assert not m.a.grad.any()  # nothing written before the refusal
    backbone.add_grads(m, torch.ones(4, dtype=torch.long), alpha=2)
    assert m.a.grad.tolist() == [2.0, 2.0] and m.b.grad.tolist() == [2, 2]


def test_an_alpha_too_large_for_torch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="alpha must fit in 64 bits"):
        backbone.add_grads(nn.Linear(1, 1), torch.ones(2), alpha=10**400)


@pytest.mark.parametrize("view", ["conj", "neg"])
def test_conjugate_and_negative_views_are_written_as_copy_does(view: str) -> None:
    m = nn.Module()
    m.p = nn.Parameter(torch.zeros(2, dtype=torch.cfloat))
    m.p.data = m.p.data.conj() if view == "conj" else torch._neg_view(m.p.data)
    value = torch.tensor([1 + 2j, 3 - 4j])
    backbone.set_params(m, value)
    assert torch.equal(m.p.detach().resolve_conj().resolve_neg(), value)
    backbone.set_grads(m, value)
    backbone.add_grads(m, value)
    assert torch.equal(m.p.grad, 2 * value)
    assert torch.equal(backbone.get_params(m).detach(), value)


def test_a_parameter_over_overlapping_windows_is_refused_with_nothing_written() -> None:
    m = nn.Module()
    buffer = torch.zeros(5)
    m.p = nn.Parameter(torch.zeros(3, 3))
    m.p.data = buffer.as_strided((3, 3), (1, 1))  # rows overlap: elements share memory without a zero stride
    with pytest.raises(ValueError, match="cannot be written element by element"):
        backbone.set_params(m, torch.arange(9.0))
    assert not buffer.any()


def test_a_strided_parameter_that_shares_nothing_is_written() -> None:
    m = nn.Module()
    buffer = torch.zeros(12)
    m.p = nn.Parameter(torch.zeros(3, 2))
    m.p.data = buffer.as_strided((3, 2), (4, 2))  # every other element of each row, rows apart
    backbone.set_params(m, torch.arange(1.0, 7.0))
    assert torch.equal(m.p.detach(), torch.arange(1.0, 7.0).view(3, 2))


def test_an_alpha_that_overflows_a_gradients_dtype_is_refused_before_any_write() -> None:
    m = nn.Module()
    m.a, m.b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float16))
    backbone.set_grads(m, torch.zeros(4))
    with pytest.raises(ValueError, match=r"alpha=10000000000\.0 times a torch\.float16 vector cannot be added"):
        backbone.add_grads(m, torch.ones(4, dtype=torch.float16), alpha=1e10)
    assert not m.a.grad.any() and not m.b.grad.any()


def test_dtypes_that_do_not_promote_are_refused_before_any_write() -> None:
    m = nn.Module()
    m.a = nn.Parameter(torch.zeros(2))
    m.b = nn.Parameter(torch.zeros(2, dtype=torch.float8_e4m3fn), requires_grad=False)
    backbone.set_grads(m, torch.zeros(4))
    with pytest.raises(ValueError, match=r"cannot be added into torch\.float8_e4m3fn gradients"):
        backbone.add_grads(m, torch.ones(4))
    assert not m.a.grad.any()
    for read in (backbone.get_params, backbone.get_grads):
        with pytest.raises(TypeError, match="have no common dtype for one flat vector"):
            read(m)


def test_quantized_and_non_tensor_parameters_are_refused_by_name() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8)
    q = nn.Module()
    q.p = nn.Parameter(quantized, requires_grad=False)
    with pytest.raises(TypeError, match="parameter 'p' must be a plain dense tensor, got a quantized one"):
        backbone.get_grads(q)
    odd = nn.Linear(2, 1)
    odd._parameters["x"] = 3.0  # type: ignore[assignment]
    with pytest.raises(TypeError, match="parameter 'x' must be a tensor, got float"):
        backbone.get_params(odd)
