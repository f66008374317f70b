"""Flat-operation promises at their edges: memory that may or may not be shared, lazy views, alpha's range.

Each test states a documented behaviour and checks it against a plain computation; together they close
what mutation testing (``tox -e mutation``) found no test watching.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import backbone


def vector_of(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


class One(nn.Module):
    """A module with one parameter, given as is."""

    def __init__(self, p: torch.Tensor, requires_grad: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(p, requires_grad=requires_grad)


# --- gradients that own each element, however strided ------------------------------------


def test_a_transposed_gradient_with_a_zero_stride_unit_dimension_is_written() -> None:
    net = One(torch.zeros(1, 3, 4))
    storage = torch.zeros(12)
    # Transposed (not contiguous) and a size-1 dimension whose stride is 0: no two elements share memory.
    net.p.grad = storage.as_strided((1, 3, 4), (0, 1, 3))
    backbone.set_grads(net, torch.arange(12.0))
    assert torch.equal(net.p.grad.reshape(-1), torch.arange(12.0))
    assert torch.equal(backbone.get_grads(net), torch.arange(12.0))


def test_a_gradient_whose_elements_overlap_only_across_three_dimensions_is_refused() -> None:
    net = One(torch.zeros(2, 2, 2))
    # Offsets 3i + 2j + k: (1, 0, 0) and (0, 1, 1) are both at 3; no pair of dimensions alone shows it.
    net.p.grad = torch.zeros(8).as_strided((2, 2, 2), (3, 2, 1))
    before = net.p.grad.clone()
    with pytest.raises(ValueError, match="cannot be written element by element: several of its elements share"):
        backbone.set_grads(net, torch.ones(8))
    assert torch.equal(net.p.grad, before)


# --- add_grads ----------------------------------------------------------------------------


def test_add_grads_refuses_bool_gradients_with_the_way_out() -> None:
    net = One(torch.zeros(3, dtype=torch.bool), requires_grad=False)
    with pytest.raises(TypeError) as info:
        backbone.add_grads(net, torch.ones(3, dtype=torch.bool))
    assert str(info.value) == "add_grads cannot add into bool gradients; use set_grads"
    assert net.p.grad is None


def test_add_grads_names_the_type_of_a_bad_alpha() -> None:
    net = One(torch.zeros(3))
    with pytest.raises(TypeError) as info:
        backbone.add_grads(net, torch.ones(3), alpha="2")  # type: ignore[arg-type]
    assert str(info.value) == "alpha must be a real number, got str"


@pytest.mark.parametrize("alpha", [-(2**63), 2**63 - 1, -(2**62), 2**62])
def test_add_grads_takes_every_int_alpha_of_64_bits(alpha: int) -> None:
    net = One(torch.zeros(2, dtype=torch.float64))
    backbone.add_grads(net, torch.tensor([1.0, 0.0], dtype=torch.float64), alpha=alpha)
    assert torch.equal(net.p.grad, torch.tensor([float(alpha), 0.0], dtype=torch.float64))


@pytest.mark.parametrize("alpha", [2**63, -(2**63) - 1, 2**64, -(2**64)])
def test_add_grads_refuses_an_int_alpha_beyond_64_bits(alpha: int) -> None:
    net = One(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        backbone.add_grads(net, torch.ones(2, dtype=torch.float64), alpha=alpha)
    assert str(info.value) == f"alpha must fit in 64 bits, got {alpha}"
    assert net.p.grad is None


@pytest.mark.parametrize("alpha", [1.0, -0.5, 3])
def test_add_grads_of_a_conjugate_view_adds_its_resolved_values(alpha: float) -> None:
    net = One(torch.zeros(3, dtype=torch.complex64))
    net.p.grad = torch.tensor([1 + 1j, 2 - 1j, 0j], dtype=torch.complex64)
    start = net.p.grad.clone()
    v = torch.tensor([1 + 2j, -1j, 3 + 0j], dtype=torch.complex64)
    backbone.add_grads(net, v.conj(), alpha=alpha)  # a lazy conjugate: the multi-tensor kernels refuse it
    assert torch.equal(net.p.grad, start + alpha * v.conj().resolve_conj())


def test_add_grads_of_a_negative_view_into_several_gradients() -> None:
    net = nn.Module()
    net.a, net.b, net.c = One(torch.zeros(2)), One(torch.zeros(4)), One(torch.zeros(1))
    net.a.p.grad, net.c.p.grad = torch.ones(2), torch.full((1,), 5.0)
    v = torch.complex(torch.zeros(7), torch.arange(7.0)).conj().imag  # -arange(7), as a lazy negative view
    assert v.is_neg()
    backbone.add_grads(net, v, alpha=2)
    expected = torch.tensor([1.0, 1, 0, 0, 0, 0, 5]) - 2 * torch.arange(7.0)
    assert torch.equal(backbone.get_grads(net), expected)


# --- what cannot be written, named ---------------------------------------------------------


INFERENCE = (
    "is an inference tensor (made under torch.inference_mode(), or converted from one) and cannot be written "
    "outside inference mode; expected a normal tensor (replace it with a clone made outside inference mode)"
)


def test_an_inference_parameter_is_refused_outside_inference_mode_with_the_way_out() -> None:
    with torch.inference_mode():
        layer = nn.Linear(2, 2)
    before = vector_of(layer.weight, layer.bias)
    with pytest.raises(ValueError) as info:
        backbone.set_params(layer, torch.zeros(6))
    assert str(info.value) == f"parameter 'weight' {INFERENCE}"
    assert torch.equal(vector_of(layer.weight, layer.bias), before)


def test_an_inference_out_buffer_is_named_out() -> None:
    layer = nn.Linear(2, 2)
    with torch.inference_mode():
        out = torch.zeros(6)
    with pytest.raises(ValueError) as info:
        backbone.get_params(layer, out=out)
    assert str(info.value) == f"out {INFERENCE}"
    with pytest.raises(ValueError) as info:
        backbone.get_grads(layer, out=out)
    assert str(info.value) == f"out {INFERENCE}"


def test_an_expanded_out_buffer_is_named_out() -> None:
    layer = nn.Linear(2, 2)
    out = torch.zeros(1).expand(6)
    with pytest.raises(ValueError) as info:
        backbone.get_params(layer, out=out)
    assert str(info.value).startswith("out cannot be written element by element: several of its elements share")


def test_add_grads_rounds_once_from_the_vectors_dtype_as_add_does() -> None:
    generator = torch.Generator().manual_seed(0)
    net = One(torch.zeros(1000))
    start = torch.randn(1000, generator=generator)
    net.p.grad = start.clone()
    v = torch.randn(1000, generator=generator, dtype=torch.float64) / 3
    backbone.add_grads(net, v, alpha=0.3)
    assert torch.equal(net.p.grad, start.clone().add_(v, alpha=0.3))  # not v converted to float32 first


def test_a_vector_that_cannot_be_cast_is_refused_naming_the_argument() -> None:
    net = nn.Linear(2, 1)
    complex_vector = torch.zeros(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"^new_params has dtype torch.complex64, which cannot be cast"):
        backbone.set_params(net, complex_vector)
    with pytest.raises(TypeError, match=r"^new_grads has dtype torch.complex64, which cannot be cast"):
        backbone.set_grads(net, complex_vector)
    with pytest.raises(TypeError, match=r"^vector has dtype torch.complex64, which cannot be cast"):
        backbone.add_grads(net, complex_vector)


def strided_parameter_net() -> tuple[nn.Module, Tensor]:
    """A module whose one parameter is a transposed view into the first 12 elements of ``memory``."""
    memory = torch.zeros(40)
    net = nn.Module()
    net.w = nn.Parameter(memory[:12].view(4, 3).t())  # [3, 4], strides (1, 3): not contiguous
    assert not net.w.is_contiguous() and net.w.data_ptr() == memory.data_ptr()
    return net, memory


def test_out_touching_the_last_element_of_a_non_contiguous_parameter_is_refused() -> None:
    net, memory = strided_parameter_net()
    with pytest.raises(ValueError, match="overlaps the parameter 'w'"):
        backbone.get_params(net, out=memory[11:23])


def test_out_just_past_a_non_contiguous_parameter_is_accepted() -> None:
    net, memory = strided_parameter_net()
    with torch.no_grad():
        net.w.copy_(torch.arange(12.0).view(3, 4))
    out = backbone.get_params(net, out=memory[12:24])
    assert out.data_ptr() == memory[12:].data_ptr()
    assert torch.equal(out, torch.arange(12.0))
